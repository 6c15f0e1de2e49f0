"""``manage.py serve`` as a real server process for the tests, a process's memory, and the broker
fixture of the real-server tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Server, free_port, wait_for_port
from tests.test_backends import migrate_pg


@pytest.fixture(params=["redis", "postgres"], name="backend")
def broker_backend(request: pytest.FixtureRequest) -> str:
    """Runs a real-server test on each broker: the real Redis, and the real PostgreSQL (migrated)."""
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    else:
        request.getfixturevalue("postgres")
        migrate_pg()
    return str(request.param)


@contextlib.contextmanager
def manage_serve(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``python -m django serve`` on a free port for the with-block (the test settings, tests.asgi)."""
    port = free_port()
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), **(env or {})}
    log_file = tempfile.NamedTemporaryFile(prefix="tether-serve-", suffix=".log", delete=False)
    command = [sys.executable, "-m", "django", "serve", "--port", str(port), "--app", "tests.asgi:application", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server("serve", port, process, Path(log_file.name))
    try:
        try:
            wait_for_port(port, process)
        except Exception as exc:
            server.stop()
            raise RuntimeError(f"manage.py serve did not start:\n{server.log}") from exc
        yield server
    finally:
        server.stop()
        log_file.close()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}
