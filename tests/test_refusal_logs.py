"""A refused handshake is not an error: no ERROR line in any supported server's log.

Each refusal tether makes (unknown route 4404, login required 4401, Origin 4403, a handler that
closes before accepting) is made against the real server, then the server's own log is read: it
must show the refusals (tether's lines and the server's 403s, so the log really was read) and no
ERROR or traceback. uvicorn < 0.55 with ``--ws websockets-sansio`` logged
"ASGI callable returned without completing handshake." after every refusal with a response; it
runs here too, from a copy of uvicorn 0.54.0 installed for the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import websockets

from tests.conftest import require
from tests.servers import SERVERS, serve

OLD_UVICORN = "0.54.0"  # the last release whose websockets-sansio logs the false error
REFUSALS = {
    "/ws/nope/": "no URL pattern matches (closed 4404)",
    "/ws/auth/private/": "login required (closed 4401)",
    "/ws/echo/": "(closed 4403)",  # opened with a foreign Origin
    "/ws/refuse/": None,  # the handler closes before accepting: the server's 403, no line of tether's
}


async def refuse_all(url: str) -> list[int]:
    statuses = []
    for path in REFUSALS:
        origin = "http://evil.example" if path == "/ws/echo/" else None
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url + path, origin=origin):  # type: ignore[arg-type]
                pass
        statuses.append(info.value.response.status_code)
    return statuses


def old_uvicorn() -> Path:
    """uvicorn 0.54.0 installed (once, cached) in a directory to put first on PYTHONPATH."""
    target = Path(tempfile.gettempdir()) / f"tether-uvicorn-{OLD_UVICORN}"
    if not (target / "uvicorn" / "__init__.py").exists():
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                f"uvicorn=={OLD_UVICORN}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"},  # the floor run pins uvicorn
        )
        require(
            result.returncode == 0, f"could not install uvicorn=={OLD_UVICORN} for the test: {result.stderr[-500:]}"
        )
    return target


def assert_refusals_logged_without_error(log: str, statuses: list[int]) -> None:
    assert statuses == [403, 403, 403, 403], log
    for line in filter(None, REFUSALS.values()):
        assert line in log, log  # the log holds the refusals: it is the right log, read after they happened
    errors = [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback|Exception in ASGI", line)]
    assert errors == [], log


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_refusals_log_no_error(kind: str) -> None:
    """On every supported server, tether's refusals leave no ERROR line in the server's log."""
    with serve(kind) as server:
        statuses = asyncio.run(refuse_all(server.url))
        server.stop()  # flushes the log
        log = server.log
    assert_refusals_logged_without_error(log, statuses)


def test_refusals_log_no_error_on_uvicorn_sansio_before_its_fix() -> None:
    """uvicorn 0.54 websockets-sansio: the false "without completing handshake" ERROR is filtered out, only it."""
    pythonpath = os.pathsep.join([str(old_uvicorn()), str(Path(__file__).resolve().parent.parent)])
    with serve("uvicorn-sansio", env={"PYTHONPATH": pythonpath}) as server:
        statuses = asyncio.run(refuse_all(server.url))
        server.stop()
        log = server.log
    version = subprocess.run(
        [sys.executable, "-c", "import uvicorn; print(uvicorn.__version__)"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == OLD_UVICORN  # the server really was the affected version
    assert_refusals_logged_without_error(log, statuses)
