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
from pathlib import Path
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import reachable, require_program, require_service
from tests.faultproxy import FaultProxy
from tests.servers import ROOT, Server, free_port, serve, wait_for_port
from tests.serving import broker_backend  # noqa: F401 (the backend fixture)
from tests.test_backends import migrate_pg

SETTINGS = {"redis": "tests.settings_redis", "postgres": "tests.settings_postgres"}


class PrivateRedis:
    """A redis-server of the test's own on a free port, so a test may kill it: the machine's is never touched."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it listens."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.process, timeout=20)

    def kill(self) -> None:
        """Kill it (as a crash would) and wait until it is gone. Idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_program("/usr/bin/redis-server", "apt-get install redis-server")
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def backend_env(
    backend: str, redis_url: str | None = None, pg_port: int | None = None, groups: dict[str, Any] | None = None
) -> dict[str, str]:
    """Environment for a process using ``backend``, optionally at another Redis URL or PostgreSQL port,
    with ``groups`` as TETHER["GROUPS"]."""
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS[backend]}
    tether: dict[str, Any] = {"GROUPS": groups} if groups else {}
    if redis_url is not None:
        tether["OPTIONS"] = {"url": redis_url, "prefix": "tether-test:"}
    if tether:
        env["TETHER_TEST_SETTINGS"] = json.dumps(tether)
    if pg_port is not None:
        env["TETHER_TEST_PG_PORT"] = str(pg_port)
    return env


@contextlib.contextmanager
def servers(backend: str, count: int, **where: Any) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve("uvicorn-sansio", env=backend_env(backend, **where))) for _ in range(count)]


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


async def run_python(backend: str, *args: str, **where: Any) -> str:
    """Run ``python *args`` as a third process with the backend's settings; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **backend_env(backend, **where)}
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


async def test_redis_restart_resubscribes_without_reconnecting_sockets(private_redis: PrivateRedis) -> None:
    """After a (private) Redis is killed and started again, broadcasts flow again to the same open sockets;
    while it is down, publishing reports BackendUnavailable to the handler instead of hanging."""
    group = f"r.{uuid.uuid4().hex[:10]}"
    url = private_redis.url
    with servers("redis", 1, redis_url=url) as (server,):
        async with members([server.url, server.url], group) as (a, b):
            private_redis.kill()
            assert not reachable("127.0.0.1", private_redis.port)
            await a.send(json.dumps({"broadcast": "while down"}))
            reply = json.loads(await asyncio.wait_for(a.recv(), 10))
            assert "Redis" in reply["unavailable"]
            await asyncio.to_thread(private_redis.start)
            await wait_until_flowing(a)
            await run_python("redis", "-c", PUBLISH_SCRIPT, group, "5", redis_url=url)
            assert (await collect(a))[-7:] == [{"n": n} for n in range(5)] + [b"binary", "end"]
            assert (await collect(b))[-7:] == [{"n": n} for n in range(5)] + [b"binary", "end"]
    assert re.search(r"Redis subscriber on \S+ reconnected after", server.log)


async def test_redis_py_reconnecting_by_itself_is_logged(private_redis: PrivateRedis) -> None:
    """CLIENT KILL TYPE pubsub on the subscriber: the reconnect is logged, and broadcasts flow again."""
    group = f"k.{uuid.uuid4().hex[:10]}"
    with servers("redis", 1, redis_url=private_redis.url) as (server,):
        async with members([server.url], group) as (a,):
            killed = await asyncio.to_thread(
                subprocess.run,
                ["redis-cli", "-p", str(private_redis.port), "CLIENT", "KILL", "TYPE", "pubsub"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert killed.stdout.strip() == "1"
            await wait_until_flowing(a)
    assert re.search(r"Redis subscriber on \S+ lost", server.log)
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


STEADY_PUBLISHER = """
import json, logging, sys, time, django
django.setup()
from tether import BackendUnavailable, broadcast_sync
logging.basicConfig()
log = logging.getLogger("publisher")
group, count = sys.argv[1], int(sys.argv[2])
sent = []
next_at = time.monotonic()
for n in range(count):
    time.sleep(max(0.0, next_at - time.monotonic()))  # pacing: 100 messages per second, no catch-up burst
    next_at = max(next_at + 0.01, time.monotonic())
    try:
        broadcast_sync(group, {"n": n})
    except BackendUnavailable as exc:
        log.warning("message %d not sent: %s", n, exc)
        sent.append([n, False, time.monotonic()])
    else:
        sent.append([n, True, time.monotonic()])
while True:
    try:
        broadcast_sync(group, "end")
        break
    except BackendUnavailable:
        time.sleep(0.05)
print(json.dumps(sent))
"""


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_broker_cut_for_3_seconds_under_100_messages_per_second(kind: str, history: bool) -> None:
    """The proxy cuts the broker for 3 s while a third process publishes 100 messages/s to sockets on two
    servers: every message not sent is counted and logged by the publisher, the sockets stay connected, and
    every message published from 0.5 s after the broker answers again reaches every socket. In a group
    with history, every message the broker took reaches every socket: the hubs backfill after reconnecting."""
    require_service(kind, "127.0.0.1", 6379 if kind == "redis" else 5432)
    if kind == "postgres":
        migrate_pg()
    group = f"cut.{uuid.uuid4().hex[:10]}"
    async with FaultProxy(6379 if kind == "redis" else 5432) as proxy:
        where: dict[str, Any] = (
            {"redis_url": f"redis://127.0.0.1:{proxy.port}/0"} if kind == "redis" else {"pg_port": proxy.port}
        )
        if history:
            where["groups"] = {"cut.*": {"history": 1000}}
        with servers(kind, 2, **where) as (one, two):
            async with members([one.url, two.url], group) as clients:
                env = {**os.environ, "PYTHONPATH": str(ROOT), **backend_env(kind, **where)}
                publisher = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", STEADY_PUBLISHER, group, "700",
                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                received: list[list[int]] = [[], []]
                flowing = asyncio.Event()

                async def read(ws: ClientConnection, into: list[int]) -> None:
                    while (message := await asyncio.wait_for(ws.recv(), 30)) != "end":
                        into.append(json.loads(message)["n"])
                        if into[-1] >= 100:
                            flowing.set()

                readers = [asyncio.create_task(read(ws, into)) for ws, into in zip(clients, received, strict=True)]
                await asyncio.wait_for(flowing.wait(), 30)
                proxy.refuse()
                await proxy.cut()
                cut_at = time.monotonic()
                await asyncio.sleep(3)  # the length of the fault
                await proxy.restore()
                restored_at = time.monotonic()
                out, err = await asyncio.wait_for(publisher.communicate(), 60)
                await asyncio.gather(*readers)
        logs = one.log + two.log
    sent = json.loads(out)
    failed = [n for n, ok, _ in sent if not ok]
    assert failed and err.decode().count("not sent:") == len(failed)  # every refused message counted and logged
    after = [(n, t) for n, ok, t in sent if ok and t > restored_at]
    for into in received:
        assert into == sorted(into)  # in order
        lost = {n for n, ok, _ in sent if ok} - set(into)
        assert not [n for n, t in after if n in lost and t > restored_at + 0.5]
        assert not [n for n, ok, t in sent if ok and t < cut_at and n in lost and n < min(into[-1:] or [0])]
        if history:
            assert not lost, f"{len(lost)} accepted messages lost in a history group: {sorted(lost)[:20]}"
        resumed = min(t for n, t in after if n in into) - restored_at
        print(
            f"\n{kind} ({'history' if history else 'live'}): {len(failed)} refused while cut (counted, logged); {len([n for n, _ in after if n in lost])} "
            f"published after the broker answered lost; delivery resumed {resumed:.3f}s after the restore"
        )
    assert "reconnected after" in logs
