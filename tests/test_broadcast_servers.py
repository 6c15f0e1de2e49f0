"""Broadcast across real processes: two uvicorn servers, a third process publishing, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import reachable
from tests.servers import ROOT, Server, serve, wait_for_port
from tests.test_backends import migrate_pg

SETTINGS = {"redis": "tests.settings_redis", "postgres": "tests.settings_postgres"}
REDIS_START = [  # the machine's own start command, run in the foreground of a detached session
    "redis-server", "--daemonize", "no", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    else:
        request.getfixturevalue("postgres")
        migrate_pg()
    return str(request.param)


@contextlib.contextmanager
def servers(backend: str, count: int) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(serve("uvicorn-sansio", env={"DJANGO_SETTINGS_MODULE": SETTINGS[backend]}))
            for _ in range(count)
        ]


@contextlib.asynccontextmanager
async def members(urls: list[str], group: str) -> AsyncIterator[list[ClientConnection]]:
    """Clients joined to ``group`` (each has read its {"joined": group})."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for url in urls:
            ws = await stack.enter_async_context(ws_connect(f"{url}/ws/group/{group}/"))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"joined": group}
            clients.append(ws)
        yield clients


async def run_python(backend: str, *args: str) -> str:
    """Run ``python *args`` as a third process with the backend's settings; returns its stdout."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS[backend], "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


PUBLISH_SCRIPT = """
import sys, django
django.setup()
from tether import broadcast_sync
group = sys.argv[1]
for n in range(int(sys.argv[2])):
    broadcast_sync(group, {"n": n})
if len(sys.argv) > 3:
    broadcast_sync(group, "x" * int(sys.argv[3]))
broadcast_sync(group, b"binary")
broadcast_sync(group, "end")
"""


async def collect(ws: ClientConnection, until: str = "end", timeout: float = 15) -> list[Any]:
    """Everything ``ws`` receives up to and including the text ``until``."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while not received or received[-1] != until:
        message = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        received.append(message if isinstance(message, bytes) or not message.startswith("{") else json.loads(message))
    return received


async def test_broadcast_from_a_third_process_reaches_both_servers(backend: str) -> None:
    """A script's broadcast_sync() and the tether_broadcast command reach clients on two servers, in order, nothing extra."""
    group = f"x.{uuid.uuid4().hex[:10]}"
    big = 9000 if backend == "postgres" else 0
    with servers(backend, 2) as (one, two):
        async with members([one.url, one.url, two.url, two.url], group) as clients:
            await run_python(backend, "-c", PUBLISH_SCRIPT, group, "20", *([str(big)] if big else []))
            expected: list[Any] = [{"n": n} for n in range(20)] + (["x" * big] if big else []) + [b"binary", "end"]
            for ws in clients:
                assert await collect(ws) == expected
            out = await run_python(backend, "-m", "django", "tether_broadcast", group, '{"from": "command"}')
            assert f"Broadcast JSON message to {group}" in out
            await run_python(backend, "-m", "django", "tether_broadcast", group, "end")
            for ws in clients:
                assert await collect(ws) == [{"from": "command"}, "end"]


async def wait_until_flowing(ws: ClientConnection, deadline: float = 30) -> list[Any]:
    """Bounded poll: broadcast probes through the server until one comes back; returns what was seen."""
    seen: list[Any] = []
    end = time.monotonic() + deadline
    n = 0
    while time.monotonic() < end:
        n += 1
        await ws.send(json.dumps({"broadcast": f"probe-{n}"}))
        with contextlib.suppress(asyncio.TimeoutError):  # what wait_for raises (not TimeoutError on 3.10)
            while True:
                message = await asyncio.wait_for(ws.recv(), 0.3)
                seen.append(message)
                if isinstance(message, str) and message.startswith("probe-"):
                    return seen
    raise AssertionError(f"broadcasts did not flow again within {deadline}s; saw {seen}")


def redis_up() -> None:
    """Start Redis again as the machine does (it outlives the test), and wait until it listens."""
    if reachable("127.0.0.1", 6379):
        return
    process = subprocess.Popen(
        REDIS_START, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(6379, process, timeout=20)


async def test_redis_restart_resubscribes_without_reconnecting_sockets(redis_server: None) -> None:
    """After Redis restarts, broadcasts flow again to the same open sockets; while it is down,
    publishing reports BackendUnavailable to the handler instead of hanging."""
    group = f"r.{uuid.uuid4().hex[:10]}"
    with servers("redis", 1) as (server,):
        async with members([server.url, server.url], group) as (a, b):
            try:
                # SHUTDOWN answers only once the server has closed its listeners and is exiting
                await asyncio.to_thread(subprocess.run, ["redis-cli", "shutdown", "nosave"], timeout=30)
                assert not reachable("127.0.0.1", 6379)
                await a.send(json.dumps({"broadcast": "while down"}))
                reply = json.loads(await asyncio.wait_for(a.recv(), 10))
                assert "Redis" in reply["unavailable"]
            finally:
                await asyncio.to_thread(redis_up)  # always, even if the test failed
            await wait_until_flowing(a)
            await run_python("redis", "-c", PUBLISH_SCRIPT, group, "5")
            assert (await collect(a))[-7:] == [{"n": n} for n in range(5)] + [b"binary", "end"]
            assert (await collect(b))[-7:] == [{"n": n} for n in range(5)] + [b"binary", "end"]
    assert re.search(r"Redis subscriber on \S+ reconnected after", server.log)


def listener_pids(server: Server) -> list[int]:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"tether-listen-{server.process.pid}",)
        ).fetchall()
    return [int(row[0]) for row in rows]


async def test_postgres_listener_terminated_relistens(postgres: None) -> None:
    """pg_terminate_backend on the LISTEN connection: the listener reconnects and the same sockets get broadcasts."""
    migrate_pg()
    group = f"p.{uuid.uuid4().hex[:10]}"
    with servers("postgres", 1) as (server,):
        async with members([server.url, server.url], group) as (a, b):
            (old,) = listener_pids(server)
            with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
                assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone() == (True,)
            await wait_until_flowing(a)
            assert listener_pids(server) not in ([], [old])
            await run_python("postgres", "-c", PUBLISH_SCRIPT, group, "5", "9000")
            expected = [{"n": n} for n in range(5)] + ["x" * 9000, b"binary", "end"]
            assert (await collect(a))[-8:] == expected
            assert (await collect(b))[-8:] == expected
    assert re.search(r"PostgreSQL listener on database \S+ reconnected after", server.log)
