"""Real ASGI server processes for end-to-end tests.

``serve("uvicorn-sansio")`` starts the server on a free port, waits (bounded
poll, no sleeps) until it accepts TCP connections, yields a ``Server``, and
stops it at exit. Its output is kept in ``server.log`` for failure messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVERS = {
    "uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--ws", "websockets", "--lifespan", "on"],
    "uvicorn-sansio": [
        "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--ws", "websockets-sansio", "--lifespan", "on",
    ],
    "uvicorn-wsproto": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--ws", "wsproto", "--lifespan", "on"],
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}"],
    "hypercorn": ["-m", "hypercorn", "-b", "127.0.0.1:{port}"],
    "granian": ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"],
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return int(self.process.returncode)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Bounded poll until 127.0.0.1:port accepts a TCP connection, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        try:
            process.wait(timeout=0.05)  # the poll interval, cut short if the server exits
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"server exited with {process.returncode} before listening")
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


@contextlib.contextmanager
def serve(
    kind: str = "uvicorn-sansio",
    app: str = "tests.asgi:application",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    cwd: Path = ROOT,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """Run ``app`` under the ASGI server ``kind`` (a key of ``SERVERS``) for the with-block.

    ``env`` is laid over the defaults (``DJANGO_SETTINGS_MODULE=tests.settings``,
    ``PYTHONPATH`` the repository), ``extra_args`` go to the server's command
    line (e.g. ``["--workers", "2"]``), and ``cwd`` is its working directory.
    """
    port = port or free_port()
    args = [*(a.format(port=port) for a in SERVERS[kind]), *extra_args]
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), **(env or {})}
    log_file = tempfile.NamedTemporaryFile(prefix=f"tether-{kind}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, *args, app], cwd=cwd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    server = Server(kind, port, process, Path(log_file.name))
    try:
        try:
            wait_for_port(port, process)
        except Exception as exc:
            server.stop()
            raise RuntimeError(f"{kind} did not start:\n{server.log}") from exc
        yield server
    finally:
        server.stop()
        log_file.close()
