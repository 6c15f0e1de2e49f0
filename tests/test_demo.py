"""The README's main command: scripts/demo.sh migrates and serves the chat example."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import ROOT, free_port, wait_for_port


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, redirects not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Location", "")


def test_demo_script_serves_the_chat(tmp_path: Path) -> None:
    """demo.sh (in this virtualenv, on a fresh SQLite file) serves the login page, the room page's
    redirect to it, the page's JavaScript (chat.js on tether.js) and icon (with no warning about
    streaming files under ASGI); the websocket route answers plain HTTP with 426.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "TETHER_BACKEND")}
    env.update(PORT=str(port), VENV=sys.prefix, DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "demo.sh")], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            try:
                wait_for_port(port, process, timeout=180)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"demo.sh didn't serve:\n{log.read_text()}") from exc
            base = f"http://127.0.0.1:{port}"
            status, body = get(f"{base}/accounts/login/")
            assert status == 200 and "Log in" in body
            assert get(f"{base}/rooms/lobby/") == (302, "/accounts/login/?next=/rooms/lobby/")
            status, body = get(f"{base}/static/chat/chat.js")
            assert status == 200 and "new Tether(" in body  # the page's one socket is tether.js's
            status, body = get(f"{base}/static/tether/tether.js")
            assert status == 200 and 'export const PROTOCOL = "tether.v1"' in body
            assert get(f"{base}/static/chat/favicon.svg")[0] == 200  # the pages' <link rel=icon>
            # Python prints a warning before the body it is about goes out, so it's in the log by now.
            assert "StreamingHttpResponse" not in log.read_text()
            assert get(f"{base}/ws/")[0] == 426
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    assert (tmp_path / "demo.sqlite3").exists()  # migrated where DATABASE_URL said
