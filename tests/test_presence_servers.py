"""Presence across two real uvicorn processes, over the real Redis and the real PostgreSQL: two clients
see each other, and a server killed with SIGKILL has its members leave within the documented TTL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.servers import Server, serve
from tests.serving import broker_backend  # noqa: F401 (the backend fixture)

TTL = 1.5  # PRESENCE_TTL of the servers: a killed one's members leave within 4/3 x TTL = 2 s
GROUPS = {"room.*": {"presence": True}}


def tether_settings(backend: str) -> dict[str, Any]:
    common = {"GROUPS": GROUPS, "PRESENCE_TTL": TTL}
    if backend == "redis":
        options: dict[str, Any] = {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-presence-servers:"}
        return {"BACKEND": "tether.backends.redis.RedisBackend", "OPTIONS": options, **common}
    return {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}, **common}


@contextlib.contextmanager
def servers(settings: dict[str, Any], count: int) -> Iterator[list[Server]]:
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "TETHER_TEST_SETTINGS": json.dumps(settings)}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve("uvicorn-sansio", env=env)) for _ in range(count)]


class Peer:
    """One tether.v1 connection: numbered commands, pushes kept in arrival order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = 0
        self.pushes: list[dict[str, Any]] = []

    async def call(self, kind: str, **fields: Any) -> Any:
        self.ids += 1
        ident = self.ids
        await self.ws.send(json.dumps({"id": ident, "type": kind, **fields}))
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if "type" in frame:
                self.pushes.append(frame)
            elif frame["id"] == ident:
                assert "result" in frame, frame
                return frame["result"]

    async def push(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next push of ``kind``; the pushes before it are left in ``skipped``."""
        self.skipped: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            if self.pushes:
                frame = self.pushes.pop(0)
            else:
                frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            if frame.get("type") == kind:
                return frame
            if "type" in frame:
                self.skipped.append(frame)


@contextlib.asynccontextmanager
async def peer(server: Server, name: str) -> Any:
    async with ws_connect(f"{server.url}/ws/realtime/?name={name}", subprotocols=["tether.v1"]) as ws:  # type: ignore[list-item]
        yield Peer(ws)


def names(members: list[dict[str, Any]]) -> list[str]:
    return sorted(m["info"]["name"] for m in members)


async def test_two_servers_see_each_other_and_a_killed_one_leaves_within_the_ttl(backend: str) -> None:
    """Ann on server 1 sees Bob (server 2) join and both are listed on either server; server 2 is
    SIGKILLed: Ann gets Bob's leave within 4/3 x PRESENCE_TTL, once (a sentinel message follows it),
    and the list holds Ann alone."""
    room, sentinel = f"room.{uuid.uuid4().hex[:12]}", f"public.{uuid.uuid4().hex[:12]}"
    with servers(tether_settings(backend), 2) as (one, two):
        async with peer(one, "ann") as ann:
            await ann.call("subscribe", group=room)
            await ann.call("subscribe", group=sentinel)
            assert (await ann.push("join", 10))["member"]["info"] == {"name": "ann"}
            async with peer(two, "bob") as bob:
                await bob.call("subscribe", group=room)
                joined = await ann.push("join", 10)  # from the other process, through the broker
                assert joined["member"]["info"] == {"name": "bob"}
                assert names((await bob.call("presence", group=room))["members"]) == ["ann", "bob"]
                assert names((await ann.call("presence", group=room))["members"]) == ["ann", "bob"]
                two.stop(signal.SIGKILL)
                killed = time.monotonic()
                left = await ann.push("leave", 4 * TTL)
                elapsed = time.monotonic() - killed
                print(f"\n{backend}: a SIGKILLed server's member left after {elapsed:.2f}s (TTL {TTL}s)")
                assert left["member"] == joined["member"]
                assert elapsed < TTL * 4 / 3 + 0.5, elapsed
                await ann.call("publish", group=sentinel, data={"sentinel": True})
                after = await ann.push("message", 10)
                assert after["data"] == {"sentinel": True}
                assert not [p for p in ann.skipped if p["type"] in ("join", "leave")]  # no second leave, no ann leave
                assert names((await ann.call("presence", group=room))["members"]) == ["ann"]
