"""Without a server that speaks WebSocket: Django's own server, uvicorn without websockets/wsproto.

The client must get a 426 naming both possible causes (never a 500), the server log must say what to
install, and runserver must still serve HTTP. Real servers throughout: wsgiref (what runserver runs),
``manage.py runserver`` and uvicorn in a process whose site-packages lack the WebSocket libraries.
"""

from __future__ import annotations

import asyncio
import http.client
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer

from tests.hidden import environment_without
from tests.servers import ROOT, free_port, wait_for_port

BOTH_CAUSES = (b"a proxy in front of the server dropped the Upgrade", b"pip install 'uvicorn[standard]'")


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def wsgi_port() -> Iterator[int]:
    """Django's WSGI server (runserver's, built on wsgiref) serving the test project in a thread."""
    server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_wsgi_server_answers_426_without_hop_by_hop_headers(wsgi_port: int) -> None:
    """Under Django's own server a websocket route answers 426 with the hint, not 500 (wsgiref forbids Upgrade)."""
    status, headers, body = get(wsgi_port, "/ws/echo/")
    assert status == 426, body
    assert "upgrade" not in headers
    for cause in BOTH_CAUSES:
        assert cause in body


@pytest.fixture
def no_websocket_libraries(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A python command and environment in which uvicorn is installed but websockets and wsproto are not."""
    return environment_without(tmp_path, "websockets", "wsproto")


def test_runserver_falls_back_to_http_when_uvicorn_has_no_websocket_library(
    no_websocket_libraries: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    """uvicorn without websockets: runserver serves HTTP with Django's server and prints E001's message."""
    python, env = no_websocket_libraries
    port = free_port()
    env = {**env, "DJANGO_SETTINGS_MODULE": "tests.settings", "TETHER_TEST_SQLITE": str(tmp_path / "db.sqlite3")}
    process = subprocess.Popen(
        [*python, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_port(port, process)
        except RuntimeError:
            raise AssertionError(process.communicate(timeout=10)[0].decode()) from None
        assert get(port, "/")[::2] == (200, b"home")
        status, _, body = get(port, "/ws/echo/")
        assert status == 426
        for cause in BOTH_CAUSES:
            assert cause in body
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "(tether.E001)" not in output  # shown as the fallback's warning, not as a failed check
    assert "neither 'websockets' nor 'wsproto' is installed" in output
    assert "Falling back to Django's server: HTTP only" in output


def test_uvicorn_without_websocket_library_logs_e001_and_answers_426(
    no_websocket_libraries: tuple[list[str], dict[str, str]],
) -> None:
    """uvicorn that can't speak WebSocket: the app logs E001 at startup; a client's handshake gets the 426 hint."""
    python, env = no_websocket_libraries
    port = free_port()
    process = subprocess.Popen(
        [*python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "tests.asgi:application"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    async def handshake() -> websockets.InvalidStatus:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/echo/"):
                pass
        return info.value

    try:
        wait_for_port(port, process)
        refused = asyncio.run(handshake())
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert refused.response.status_code == 426, output
    for cause in BOTH_CAUSES:
        assert cause in refused.response.body
    assert "(tether.E001) uvicorn is installed but can't speak WebSocket" in output
    assert output.index("tether.E001") < output.index("Application startup complete")
