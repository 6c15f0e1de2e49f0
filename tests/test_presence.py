"""Presence: the backend contract on memory, Redis and PostgreSQL; the protocol's presence in-process;
presence() and presence_sync(); the user signals; GROUPS validation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests import test_backends
from tests.test_backends import BackendFactory, new_group, pg_migrated, started  # noqa: F401
from tests.test_realtime import Client
from tether import broadcast, presence, presence_sync
from tether.hub import get_hub, stop_hub
from tether.positions import parse_groups, presence_enabled
from tether.presence import Tracker
from tether.realtime import PROTOCOL
from tether.signals import user_connected, user_disconnected
from tether.testing import connect

make_backend = test_backends.make_backend  # the fixture: memory, Redis, PostgreSQL


@pytest.fixture
def backends(make_backend: BackendFactory) -> BackendFactory:
    """``make_backend`` of tests/test_backends.py, one instance per simulated process."""
    return make_backend


GROUPS = {"room.*": {"presence": True}, "public.*": {"history": 100}}


def member(user: str | None, connection: str, info: Any = None) -> str:
    return json.dumps({"user": user, "connection": connection, "info": info})


def of(group: str, swept: list[tuple[str, str, bool]]) -> list[tuple[str, bool]]:
    """The sweep's entries of ``group`` (a shared broker holds other tests' leftovers too)."""
    return sorted((json.loads(m)["connection"], last) for g, m, last in swept if g == group)


# -- the backend contract ----------------------------------------------------------


async def test_entries_across_processes(backends: BackendFactory) -> None:
    """Entries stored by two processes are listed by both; remove returns the member once, then nothing."""
    a, b = await started(backends(None)), await started(backends(None))
    group, pa, pb = new_group(), uuid.uuid4().hex, uuid.uuid4().hex
    assert await a.presence_add(group, "a1", "1", member("1", "a1", {"n": "é"}), pa, 30)
    assert await b.presence_add(group, "b1", "2", member("2", "b1"), pb, 30)
    for backend in (a, b):
        assert sorted(json.loads(m)["connection"] for m in await backend.presence_list(group)) == ["a1", "b1"]
    assert {"n": "é"} in [json.loads(m)["info"] for m in await b.presence_list(group)]
    removed, last = await b.presence_remove(group, "a1")
    assert removed is not None and json.loads(removed) == {"user": "1", "connection": "a1", "info": {"n": "é"}}
    assert last
    assert await a.presence_remove(group, "a1") == (None, False)  # removed once
    assert [json.loads(m)["connection"] for m in await a.presence_list(group)] == ["b1"]
    assert await a.presence_list(new_group()) == []
    for backend, process in ((a, pa), (b, pb)):
        await backend.presence_remove(group, "b1")
        await backend.presence_forget(process)


async def test_first_and_last_entry_of_a_user(backends: BackendFactory) -> None:
    """add says whether it is the user's first live entry, remove whether it was the last; anonymous: always."""
    a, b = await started(backends(None)), await started(backends(None))
    group, pa, pb = new_group(), uuid.uuid4().hex, uuid.uuid4().hex
    assert await a.presence_add(group, "x", "7", member("7", "x"), pa, 30)
    assert not await b.presence_add(group, "y", "7", member("7", "y"), pb, 30)
    assert await b.presence_add(group, "z", "8", member("8", "z"), pb, 30)
    assert await a.presence_add(group, "anon1", None, member(None, "anon1"), pa, 30)
    assert await b.presence_add(group, "anon2", None, member(None, "anon2"), pb, 30)
    assert (await a.presence_remove(group, "x"))[1] is False  # "y" is still there
    assert (await a.presence_remove(group, "y"))[1] is True
    assert await a.presence_add(group, "x", "7", member("7", "x"), pa, 30)  # the first again
    for connection in ("x", "z", "anon1", "anon2"):
        await a.presence_remove(group, connection)
    assert await a.presence_list(group) == []


async def test_a_dead_process_expires_and_is_swept_once(backends: BackendFactory) -> None:
    """A process past its deadline: its entries vanish from lists, don't count as the user's, and three
    concurrent sweeps remove each exactly once; a live process's heartbeat says whether it was known."""
    a, b, c = [await started(backends(None)) for _ in range(3)]
    group, dead, live = new_group(), uuid.uuid4().hex, uuid.uuid4().hex
    assert not await b.presence_heartbeat(live, 30)  # unknown so far
    assert await b.presence_heartbeat(live, 30)
    await a.presence_add(group, "d1", "5", member("5", "d1"), dead, 0.4)
    await a.presence_add(group, "d2", "6", member("6", "d2"), dead, 0.4)
    await b.presence_add(group, "l1", "6", member("6", "l1"), live, 30)
    started_at = time.monotonic()
    while len(await b.presence_list(group)) > 1:  # bounded poll: the deadline is in the broker's clock
        assert time.monotonic() - started_at < 5, "a dead process's entries never expired"
        await asyncio.sleep(0.05)
    assert [json.loads(m)["connection"] for m in await b.presence_list(group)] == ["l1"]
    assert await b.presence_add(group, "l2", "5", member("5", "l2"), live, 30)  # d1 (user 5) doesn't count
    swept = await asyncio.gather(a.presence_sweep(), b.presence_sweep(), c.presence_sweep())
    assert sorted(of(group, swept[0]) + of(group, swept[1]) + of(group, swept[2])) == [("d1", False), ("d2", False)]
    assert of(group, await b.presence_sweep()) == []
    assert not await a.presence_heartbeat(dead, 30)  # swept: it must store its entries again
    assert await a.presence_remove(group, "d1") == (None, False)
    for connection in ("l1", "l2"):
        await b.presence_remove(group, connection)
    for process in (dead, live):
        await b.presence_forget(process)


async def test_a_last_entry_swept_says_so(backends: BackendFactory) -> None:
    """The sweep's ``last`` is True for a user with no live entry left (the user signals rely on it)."""
    a, b = await started(backends(None)), await started(backends(None))
    group, dead = new_group(), uuid.uuid4().hex
    await a.presence_add(group, "only", "9", member("9", "only"), dead, 0.2)
    deadline = time.monotonic() + 5
    while await b.presence_list(group):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert of(group, await b.presence_sweep()) == [("only", True)]


# -- the protocol, in-process ---------------------------------------------------------------


@pytest.fixture
async def presence_hub() -> AsyncIterator[None]:
    with override_settings(TETHER={"GROUPS": GROUPS}):
        yield
        await stop_hub()


def room() -> str:
    return f"room.{uuid.uuid4().hex[:12]}"


async def next_push(client: Client, kind: str) -> dict[str, Any]:
    while True:
        push = await client.push()
        if push["type"] == kind:
            return push


@pytest.mark.usefixtures("presence_hub")
async def test_two_connections_see_each_other_join_and_leave() -> None:
    """Each subscriber gets a join push per member (its own included), the presence command lists both with
    their info, and a closing connection's leave reaches the other; a group without presence says no_presence."""
    group = room()
    async with connect("/ws/realtime/?name=ann", subprotocols=[PROTOCOL]) as ws_a:
        a = Client(ws_a)
        assert "result" in await a.call("subscribe", group=group)
        own = await next_push(a, "join")
        assert own["group"] == group and own["member"]["info"] == {"name": "ann"} and own["member"]["user"] is None
        async with connect("/ws/realtime/?name=bob", subprotocols=[PROTOCOL]) as ws_b:
            b = Client(ws_b)
            assert "result" in await b.call("subscribe", group=group)
            joined = await next_push(a, "join")
            assert joined["member"]["info"] == {"name": "bob"}
            listed = (await b.call("presence", group=group))["result"]
            assert listed["group"] == group
            assert sorted(m["info"]["name"] for m in listed["members"]) == ["ann", "bob"]
            assert sorted(m.info["name"] for m in await presence(group)) == ["ann", "bob"]
            bob = joined["member"]
        left = await next_push(a, "leave")
        assert left == {"type": "leave", "group": group, "member": bob}
        assert [m["info"]["name"] for m in (await a.call("presence", group=group))["result"]["members"]] == ["ann"]
        other = f"public.{uuid.uuid4().hex[:8]}"
        await a.call("subscribe", group=other)
        assert (await a.call("presence", group=other))["error"]["code"] == "no_presence"


@pytest.mark.usefixtures("presence_hub")
async def test_unsubscribe_leaves_and_stops_the_pushes() -> None:
    """After unsubscribe the connection is out of the list and gets no more join pushes (a sentinel proves it)."""
    group, sentinel_group = room(), f"public.{uuid.uuid4().hex[:8]}"
    async with connect("/ws/realtime/?name=ann", subprotocols=[PROTOCOL]) as ws_a:
        a = Client(ws_a)
        await a.call("subscribe", group=group)
        await a.call("subscribe", group=sentinel_group)
        await next_push(a, "join")
        await a.call("unsubscribe", group=group)
        assert await presence(group) == []
        async with connect("/ws/realtime/?name=bob", subprotocols=[PROTOCOL]) as ws_b:
            await Client(ws_b).call("subscribe", group=group)
            await broadcast(sentinel_group, {"sentinel": True})
            assert (await a.push())["data"] == {"sentinel": True}  # no join of bob came before it


@pytest.mark.usefixtures("presence_hub")
async def test_plain_socket_views_are_in_presence_too() -> None:
    """A SocketView that join()s a group with presence has an entry (info None), gone when it leaves."""
    group = room()
    async with connect(f"/ws/group/{group}/") as ws:
        assert await ws.receive_json() == {"joined": group}
        assert [(m.user, m.info) for m in await presence(group)] == [(None, None)]
        await ws.send_json({"leave": group})
        assert await ws.receive_json() == {"left": group}
        assert await presence(group) == []


@pytest.mark.usefixtures("presence_hub")
async def test_presence_sync_and_errors() -> None:
    """presence_sync() from a thread; a group without presence raises ValueError."""
    group = room()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        members = await sync_to_async(presence_sync, thread_sensitive=False)(group)
        assert len(members) == 1 and len(members[0].connection) == 16
    with pytest.raises(ValueError, match="has no presence"):
        await presence("public.x")


@pytest.mark.usefixtures("presence_hub")
async def test_a_swept_process_announces_leaves() -> None:
    """The heartbeat's sweep publishes a leave for each member of a process that stopped beating."""
    group = room()
    hub = await get_hub()
    tracker = hub.service("presence", Tracker)
    async with connect("/ws/realtime/", subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        await next_push(client, "join")
        ghost = member("42", "ghost")
        await hub.backend.presence_add(group, "ghost", "42", ghost, uuid.uuid4().hex, 0.05)
        deadline = time.monotonic() + 5
        while len(await presence(group)) > 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await tracker.beat()
        left = await next_push(client, "leave")
        assert left["member"] == json.loads(ghost)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("presence_hub")
async def test_user_signals_first_and_last_socket() -> None:
    """user_connected once for a user's first socket, user_disconnected once for the last (two sockets)."""
    user = await get_user_model().objects.acreate(username=f"p{uuid.uuid4().hex[:6]}")
    events: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    def on_connected(sender: Any, user_id: str, **kwargs: Any) -> None:
        events.append(("connected", user_id))

    def on_disconnected(sender: Any, user_id: str, **kwargs: Any) -> None:
        events.append(("disconnected", user_id))
        arrived.set()

    user_connected.connect(on_connected, weak=False)
    user_disconnected.connect(on_disconnected, weak=False)
    try:
        async with connect("/ws/realtime/", subprotocols=[PROTOCOL], user=user) as one:
            await Client(one).call("ping")
            async with connect("/ws/realtime/", subprotocols=[PROTOCOL], user=user) as two:
                await Client(two).call("ping")
            assert events == [("connected", str(user.pk))] or events == []  # queued, in order
        await asyncio.wait_for(arrived.wait(), 5)
        assert events == [("connected", str(user.pk)), ("disconnected", str(user.pk))]
    finally:
        user_connected.disconnect(on_connected)
        user_disconnected.disconnect(on_disconnected)


def test_groups_setting_accepts_presence() -> None:
    """presence alone, with history, and validated."""
    rules = parse_groups({"room.*": {"presence": True}, "chat.*": {"history": 5, "presence": True}})
    assert rules[0][1].presence and rules[0][1].retention is None
    assert rules[1][1].presence and rules[1][1].retention is not None
    for bad, why in [
        ({"room.*": {"presence": "yes"}}, "True or False"),
        ({"room.*": {}}, "turns nothing on"),
        ({"room.*": {"presence": True, "history_ttl": 5}}, "int >= 1"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=why):
            parse_groups(bad)
    with override_settings(TETHER={"GROUPS": GROUPS}):
        assert presence_enabled("room.1") and not presence_enabled("public.1") and not presence_enabled("x")
