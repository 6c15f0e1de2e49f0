"""History across real processes: uvicorn servers, a third process publishing, the real PostgreSQL,
the real Redis (and a private redis-server wherever a connection is killed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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

from tests.servers import ROOT, Server, free_port, serve, wait_for_port
from tests.serving import broker_backend  # noqa: F401 (the backend fixture)
from tests.test_backends import migrate_pg

GROUPS = {"hist.*": {"history": 5000, "history_ttl": 600}}


def tether_settings(backend: str, redis_url: str = "redis://127.0.0.1:6379/0") -> dict[str, Any]:
    if backend == "redis":
        options: dict[str, Any] = {"url": redis_url, "prefix": "tether-history-servers:"}
        return {"BACKEND": "tether.backends.redis.RedisBackend", "OPTIONS": options, "GROUPS": GROUPS}
    return {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}, "GROUPS": GROUPS}


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (its connections may be killed), stopped after."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def servers(settings: dict[str, Any], count: int) -> Iterator[list[Server]]:
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "TETHER_TEST_SETTINGS": json.dumps(settings)}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve("uvicorn-sansio", env=env)) for _ in range(count)]


@contextlib.asynccontextmanager
async def members(urls: list[str], group: str) -> AsyncIterator[list[ClientConnection]]:
    """Clients joined to history group ``group`` (each has read its join result)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for url in urls:
            ws = await stack.enter_async_context(ws_connect(f"{url}/ws/history/{group}/", max_queue=None))
            assert "recovered" in json.loads(await asyncio.wait_for(ws.recv(), 10))
            clients.append(ws)
        yield clients


PUBLISHER = """
import asyncio, json, sys, django
django.setup()
from tether import broadcast
from tether.hub import stop_hub
group, tasks, count, pace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

async def task(t):
    offsets = []
    for n in range(count):
        offsets.append((await broadcast(group, {"t": t, "n": n})).offset)
        if pace and n % 10 == 9:
            await asyncio.sleep(pace)  # noqa: sleep-ok pacing: spread the stream over time, so faults land in the middle of it
    return offsets

async def main():
    offsets = await asyncio.gather(*(task(t) for t in range(tasks)))
    await stop_hub()
    print(json.dumps(offsets))

asyncio.run(main())
"""


async def start_python(settings: dict[str, Any], *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TETHER_TEST_SETTINGS": json.dumps(settings),
        "PYTHONPATH": str(ROOT),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def finished(process: asyncio.subprocess.Process, timeout: float = 120) -> str:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def receive(ws: ClientConnection, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The next ``count`` group messages on ``ws``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        got.append(json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))))
    return got


def check_stream(messages: list[dict[str, Any]], tasks: int, count: int, start: int = 1) -> None:
    """Offsets start..start+tasks*count-1, each once and in order; each task's messages in its order."""
    assert [m["offset"] for m in messages] == list(range(start, start + tasks * count))
    for t in range(tasks):
        assert [m["data"]["n"] for m in messages if m["data"]["t"] == t] == list(range(count))


async def test_four_publishers_to_two_servers_gap_free(backend: str) -> None:
    """4 tasks x 1,000 messages from a third process: offsets unique and gap-free, every socket on two
    servers gets all 4,000 in offset order, each publisher's in its order."""
    group = f"hist.{uuid.uuid4().hex[:10]}"
    settings = tether_settings(backend)
    with servers(settings, 2) as (one, two):
        async with members([one.url, one.url, two.url, two.url], group) as clients:
            publisher = await start_python(settings, "-c", PUBLISHER, group, "4", "1000", "0")
            received = await asyncio.gather(*(receive(ws, 4000, timeout=120) for ws in clients))
            offsets = json.loads(await finished(publisher))
            assert sorted(o for mine in offsets for o in mine) == list(range(1, 4001))
            assert all(mine == sorted(mine) for mine in offsets)
            for messages in received:
                check_stream(messages, 4, 1000)


def pubsub_killer(redis_url: str) -> Any:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]

    def kill() -> None:
        out = subprocess.run(
            ["redis-cli", "-p", port, "CLIENT", "KILL", "TYPE", "pubsub"], capture_output=True, text=True, timeout=10
        )
        assert int(out.stdout.strip()) >= 1, out  # the server's subscriber connection was there, and is cut

    return kill


def listener_killer(server: Server) -> Any:
    def kill() -> None:
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (f"tether-listen-{server.process.pid}",),
            ).fetchall()
        assert rows == [(True,)], rows

    return kill


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_listener_killed_mid_stream_loses_nothing(kind: str, request: pytest.FixtureRequest) -> None:
    """The server's broker connection is killed twice while another process publishes 1,000 messages:
    its sockets receive all 1,000 exactly once, in order, without reconnecting."""
    group = f"hist.{uuid.uuid4().hex[:10]}"
    with contextlib.ExitStack() as stack:
        if kind == "redis":
            settings = tether_settings("redis", stack.enter_context(private_redis()))
        else:
            request.getfixturevalue("postgres")
            migrate_pg()
            settings = tether_settings("postgres")
        (server,) = stack.enter_context(servers(settings, 1))
        kill = pubsub_killer(settings["OPTIONS"]["url"]) if kind == "redis" else listener_killer(server)
        async with members([server.url, server.url], group) as (a, b):
            publisher = await start_python(settings, "-c", PUBLISHER, group, "1", "1000", "0.01")
            first = await receive(a, 200)
            await asyncio.to_thread(kill)
            middle = await receive(a, 400)
            await asyncio.to_thread(kill)
            last = await receive(a, 400)
            await finished(publisher)
            check_stream(first + middle + last, 1, 1000)
            check_stream(await receive(b, 1000), 1, 1000)
            for ws in (a, b):  # nothing more: the next thing is a sentinel sent after
                await ws.send(json.dumps({"broadcast": {"t": 0, "n": "sentinel"}}))
                replies = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
                assert {"offset": 1001, "epoch": first[0]["epoch"], "data": {"t": 0, "n": "sentinel"}} in replies
    assert "reconnected" in server.log


async def test_client_away_for_two_seconds_rejoins_with_its_last_position(backend: str) -> None:
    """A client that disconnects for 2 s and rejoins with its last position gets exactly what it missed."""
    group = f"hist.{uuid.uuid4().hex[:10]}"
    settings = tether_settings(backend)
    with servers(settings, 2) as (one, two):
        async with members([one.url], group) as (ws,):
            publisher = await start_python(settings, "-c", PUBLISHER, group, "1", "300", "0.01")
            seen = await receive(ws, 50)
        last = seen[-1]
        await asyncio.sleep(2)  # noqa: sleep-ok the scenario: two seconds offline (a phone changing networks)
        await finished(publisher)
        url = f"{two.url}/ws/history/{group}/?offset={last['offset']}&epoch={last['epoch']}"
        async with ws_connect(url, max_queue=None) as again:
            hello = json.loads(await asyncio.wait_for(again.recv(), 10))
            assert hello == {"recovered": True, "position": {"offset": 300, "epoch": last["epoch"]}}
            check_stream(seen + await receive(again, 250), 1, 300)
            await again.send(json.dumps({"broadcast": {"t": 0, "n": "sentinel"}}))
            replies = [json.loads(await asyncio.wait_for(again.recv(), 10)) for _ in range(2)]
            assert {"offset": 301, "epoch": last["epoch"], "data": {"t": 0, "n": "sentinel"}} in replies


OUTBOX = """
import os, sys, django
django.setup()
from django.db import transaction
from tether import broadcast_on_commit
group, outcome = sys.argv[1], sys.argv[2]
try:
    with transaction.atomic(using="pg"):
        broadcast_on_commit(group, {"t": 0, "n": outcome}, using="pg")
        if outcome == "rollback":
            raise RuntimeError
except RuntimeError:
    pass
os._exit(0)  # die right after the commit: no on_commit hook, no atexit, no flush of anything
"""


async def test_outbox_commit_survives_the_process_dying_right_after(postgres: None) -> None:
    """broadcast_on_commit on PostgreSQL from a process that exits at once: a rollback sends nothing,
    a commit is delivered once."""
    migrate_pg()
    group = f"hist.{uuid.uuid4().hex[:10]}"
    settings = tether_settings("postgres")
    with servers(settings, 1) as (server,):
        async with members([server.url], group) as (ws,):
            await finished(await start_python(settings, "-c", OUTBOX, group, "rollback"))
            await finished(await start_python(settings, "-c", OUTBOX, group, "commit"))
            got = await receive(ws, 1)
            assert got[0]["offset"] == 1 and got[0]["data"] == {"t": 0, "n": "commit"}
            await ws.send(json.dumps({"broadcast": {"t": 0, "n": "sentinel"}}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
            assert any(r.get("data", {}).get("n") == "sentinel" and r["offset"] == 2 for r in replies)
