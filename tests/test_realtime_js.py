"""tether.js against a real uvicorn: Node's built-in test runner runs tests/js/*.test.mjs.

The pytest side starts the server (Redis backend, so a third process can publish to it) and a small
control server the Node tests call to restart the server on the same port and to start a publisher
process. The Node tests get both URLs in the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import require, require_service
from tests.servers import ROOT, free_port, serve

NODE = shutil.which("node")
GROUPS = {"room.h*": {"history": 500}, "public.small*": {"history": 5}, "room.p*": {"presence": True}}
SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.settings_redis", "TETHER_TEST_SETTINGS": json.dumps({"GROUPS": GROUPS})}


class Control:
    """The server under test, restartable on its port, and the publisher processes started for the tests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stack = ExitStack()
        self.lock = threading.Lock()
        self.publishers: list[subprocess.Popen[bytes]] = []
        self.start()

    def start(self) -> None:
        self.server = self.stack.enter_context(serve("uvicorn-sansio", env=SETTINGS, port=self.port))

    def restart(self) -> None:
        with self.lock:
            self.stack.close()
            self.stack = ExitStack()
            self.start()

    def publish(self, group: str, count: int, interval: float) -> None:
        env = {**os.environ, **SETTINGS, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.realtime_publisher", group, str(count), str(interval)], cwd=ROOT, env=env
        )
        self.publishers.append(process)

    def wait_publishers(self) -> list[int]:
        codes = [p.wait(60) for p in self.publishers]
        self.publishers.clear()
        return codes

    def close(self) -> None:
        for process in self.publishers:
            process.kill()
        self.stack.close()


def control_server(control: Control) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            result: Any = None
            if self.path == "/restart":
                control.restart()
            elif self.path == "/publish":
                control.publish(body["group"], int(body["count"]), float(body.get("interval", 0)))
            elif self.path == "/wait-publishers":
                result = control.wait_publishers()
            else:
                self.send_error(404)
                return
            data = json.dumps({"ok": True, "result": result}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def control(redis_server: None) -> Iterator[Control]:
    control = Control()
    try:
        yield control
    finally:
        control.close()


def test_tether_js_against_a_real_server(control: Control) -> None:
    """node --test tests/js/: the realtime client's tests all pass against uvicorn."""
    require(NODE is not None, "node is not installed")
    assert NODE is not None
    require_service("Redis", "127.0.0.1", 6379)
    http = control_server(control)
    try:
        env = {
            **os.environ,
            "TETHER_URL": f"ws://127.0.0.1:{control.port}/ws/realtime/",
            "TETHER_CONTROL": f"http://127.0.0.1:{http.server_address[1]}",
        }
        tests = sorted(str(p) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
        result = subprocess.run(
            [NODE, "--experimental-websocket", "--no-warnings", "--test", "--test-concurrency=1", *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        http.shutdown()
    print(result.stdout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n--- server log ---\n{control.server.log}"
