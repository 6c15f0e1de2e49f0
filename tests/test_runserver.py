"""manage.py runserver serves WebSockets through uvicorn, with autoreload; without uvicorn it says why."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import websockets
from django.core.management import call_command

from tests.servers import ROOT, free_port, wait_for_port

URLS = """
from tether.urls import websocket

async def hello(socket):
    await socket.accept()
    await socket.send_text("{reply}")
    await socket.receive()

urlpatterns = [websocket("ws/hello/", hello)]
"""


async def _hello(port: int) -> str:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/hello/") as ws:
        return str(await ws.recv())


def _try_hello(port: int) -> str | None:
    try:
        return asyncio.run(asyncio.wait_for(_hello(port), 5))
    except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
        return None


def test_runserver_serves_websockets_and_reloads(tmp_path: Path) -> None:
    """runserver answers on a websocket route, and picks up an edited URLconf without a restart."""
    (tmp_path / "rs_settings.py").write_text("from tests.settings import *\nROOT_URLCONF = 'rs_urls'\n")
    urls = tmp_path / "rs_urls.py"
    urls.write_text(URLS.format(reply="v1"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "DJANGO_SETTINGS_MODULE": "rs_settings"}
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--skip-checks"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        assert _try_hello(port) == "v1"
        urls.write_text(URLS.format(reply="v2"))
        deadline = time.monotonic() + 60
        reply = None
        while reply != "v2" and time.monotonic() < deadline:  # bounded poll across the reload
            reply = _try_hello(port)
            if reply != "v2":
                # Touch it again: the reloader ignores a change made before its first look at the file.
                os.utime(urls)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)  # the poll interval; returns early only if the server died
                assert process.poll() is None, "runserver exited during the reload"
        assert reply == "v2"
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "Starting ASGI development server (uvicorn, WebSocket: websockets-sansio)" in output


def test_runserver_without_websocket_support_falls_back_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """With no WebSocket-capable server installed, runserver is Django's and names the package to install."""
    from tether.management.commands import runserver

    with (
        mock.patch.object(runserver, "websocket_implementation", return_value=None),
        mock.patch.object(runserver.BaseRunserver, "inner_run") as django_inner_run,
    ):
        call_command("runserver", "127.0.0.1:0", use_reloader=False, skip_checks=True)
    assert django_inner_run.called
    assert "pip install 'uvicorn[standard]'" in capsys.readouterr().err


def test_websocket_implementation_prefers_sansio() -> None:
    """The default implementation is uvicorn's websockets-sansio (measured fastest)."""
    from tether.management.commands.runserver import websocket_implementation

    assert websocket_implementation() == "websockets-sansio"
