"""History groups through the hub, on memory, the real Redis and the real PostgreSQL: positions,
join(since) without gap or overlap, history(), backfill after a lost delivery, and the outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from tests.test_backends import migrate_pg
from tether import Position, broadcast, broadcast_on_commit, broadcast_sync, history, history_sync
from tether.checks import check_groups
from tether.hub import get_hub, stop_hub
from tether.positions import parse_groups, retention_for
from tether.testing import WebSocketTestClient, connect

BACKENDS = {
    "memory": {"BACKEND": "tether.backends.memory.MemoryBackend"},
    "redis": {
        "BACKEND": "tether.backends.redis.RedisBackend",
        "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-history:"},
    },
    "postgres": {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}},
}
GROUPS = {"hist.small.*": {"history": 5}, "hist.*": {"history": 1000, "history_ttl": 3600}}


@pytest.fixture(scope="session")
def pg_ready() -> None:
    migrate_pg()


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, settings: Any) -> AsyncIterator[str]:
    """Runs the test with the hub on each backend, with history for ``hist.*`` groups."""
    kind = request.param
    if kind == "redis":
        request.getfixturevalue("redis_server")
    elif kind == "postgres":
        request.getfixturevalue("postgres")
        request.getfixturevalue("pg_ready")
    settings.TETHER = {**BACKENDS[kind], "GROUPS": GROUPS}
    yield kind
    await stop_hub()


def new_group(kind: str = "hist") -> str:
    return f"{kind}.{uuid.uuid4().hex[:12]}"


async def joined(ws: WebSocketTestClient) -> dict[str, Any]:
    hello: dict[str, Any] = await ws.receive_json()
    assert "recovered" in hello
    return hello


def url(group: str, since: Position | dict[str, Any] | None = None) -> str:
    if since is None:
        return f"/ws/history/{group}/"
    if isinstance(since, Position):
        since = since.as_dict()
    return f"/ws/history/{group}/?offset={since['offset']}&epoch={since['epoch']}"


async def test_broadcast_returns_positions_only_for_history_groups(backend: str) -> None:
    """broadcast() returns Position(1), Position(2)... in a history group, None in a live-only one."""
    group = new_group()
    first = await broadcast(group, {"n": 1})
    assert first is not None and first.offset == 1
    assert await broadcast(group, {"n": 2}) == Position(2, first.epoch)
    assert await broadcast(new_group("live"), {"n": 1}) is None


async def test_group_message_gets_positions_and_join_says_where_it_stands(backend: str) -> None:
    """A plain join reports the stream's top; each message reaches group_message with its position."""
    group = new_group()
    before = await broadcast(group, {"n": 0})
    assert before is not None
    async with connect(url(group)) as ws:
        hello = await joined(ws)
        assert hello == {"recovered": False, "position": before.as_dict()}
        await ws.send_json({"broadcast": {"n": 1}})
        got = [await ws.receive_json(), await ws.receive_json()]
        published = next(m for m in got if "published" in m)["published"]
        message = next(m for m in got if "data" in m)
        assert message == {"offset": 2, "epoch": before.epoch, "data": {"n": 1}}
        assert published == {"offset": 2, "epoch": before.epoch}


async def test_join_since_recovers_exactly_what_was_missed_then_goes_live(backend: str) -> None:
    """A client that rejoins with its last position gets the missed messages in order, once, then live ones."""
    group = new_group()
    async with connect(url(group)) as ws:
        await joined(ws)
        for n in range(3):
            await broadcast(group, {"n": n})
        seen = [await ws.receive_json() for _ in range(3)]
    last = seen[-1]
    for n in range(3, 8):  # while the client is away
        await broadcast(group, {"n": n})
    async with connect(url(group, last)) as ws:
        hello = await joined(ws)
        assert hello["recovered"] is True and hello["position"]["offset"] == 8
        await broadcast(group, {"n": 8})
        got = [await ws.receive_json() for _ in range(6)]
        assert [m["offset"] for m in got] == [4, 5, 6, 7, 8, 9]
        assert [m["data"]["n"] for m in got] == [3, 4, 5, 6, 7, 8]
        await broadcast(group, {"n": "sentinel"})
        assert (await ws.receive_json())["data"]["n"] == "sentinel"  # nothing repeated before it


async def test_join_since_up_to_date_recovers_nothing_old(backend: str) -> None:
    """since = the newest position: recovered, and the next thing received is the next live message."""
    group = new_group()
    top = await broadcast(group, {"n": 0})
    async with connect(url(group, top)) as ws:
        assert (await joined(ws))["recovered"] is True
        await broadcast(group, {"n": "next"})
        assert await ws.receive_json() == {"offset": 2, "epoch": top.epoch, "data": {"n": "next"}}  # type: ignore[union-attr]


async def test_join_since_outside_the_window_or_epoch_is_not_recovered(backend: str) -> None:
    """Out of the window, or of another epoch: recovered=False and nothing old, only what follows."""
    group = new_group("hist.small")  # keeps 5
    positions = [await broadcast(group, {"n": n}) for n in range(8)]
    assert positions[0] is not None
    epoch = positions[0].epoch
    async with connect(url(group, Position(3, epoch))) as ws:  # 3: 4..8 are all held
        assert (await joined(ws))["recovered"] is True
        got = [await ws.receive_json() for _ in range(5)]
        assert [m["data"]["n"] for m in got] == [3, 4, 5, 6, 7]
    stale = (
        Position(2, epoch),
        Position(3, "another-epoch"),
        Position(99, epoch),
        Position(-4, epoch),
        Position(10**30, epoch),
    )
    for top, since in enumerate(stale, start=8):
        async with connect(url(group, since)) as ws:
            hello = await joined(ws)
            assert hello == {"recovered": False, "position": {"offset": top, "epoch": epoch}}
            await broadcast(group, {"n": "sentinel"})  # pushes 4 out of the window, too
            assert (await ws.receive_json())["data"]["n"] == "sentinel"


async def test_joins_during_a_publishing_storm_see_no_gap_and_no_overlap(backend: str) -> None:
    """Sockets joining with since while 200 messages stream in each get since+1..200 exactly."""
    group = new_group()
    zero = await history(group, limit=0)
    reached = {start: asyncio.Event() for start in (0, 5, 10, 40)}
    reached[0].set()

    async def publish() -> None:
        for n in range(1, 201):
            await broadcast(group, {"n": n})
            if n in reached:
                reached[n].set()
            if n % 20 == 0:
                await asyncio.sleep(0)  # let joins interleave

    async def member(start: int) -> list[int]:
        await reached[start].wait()  # a since the stream has reached
        async with connect(url(group, Position(start, zero.position.epoch)), timeout=10) as ws:
            hello = await joined(ws)
            assert hello["recovered"] is True
            offsets: list[int] = []
            while not offsets or offsets[-1] < 200:
                offsets.append((await ws.receive_json())["offset"])
            return offsets

    results = await asyncio.gather(publish(), *(member(start) for start in (0, 0, 5, 10, 40)))
    for start, offsets in zip((0, 0, 5, 10, 40), results[1:], strict=True):
        assert offsets == list(range(start + 1, 201))


async def test_history_pages_and_sync_twin(backend: str) -> None:
    """history() gives the last messages or those after since; history_sync() the same from sync code."""
    group = new_group()
    for n in range(6):
        await broadcast(group, {"n": n})
    page = await history(group, limit=2)
    assert [m.data for m in page.messages] == ['{"n":4}', '{"n":5}']
    assert page.position.offset == 6 and page.recovered
    after = await history(group, since=Position(1, page.position.epoch), limit=3)
    assert [m.position.offset for m in after.messages] == [2, 3, 4]
    stale = await history(group, since=Position(1, "gone"))
    assert (stale.recovered, stale.messages) == (False, [])
    synced = await sync_to_async(history_sync)(group, Position(4, page.position.epoch))
    assert [m.data for m in synced.messages] == ['{"n":4}', '{"n":5}']
    with pytest.raises(ValueError, match="keeps no history"):
        await history(new_group("live"))


async def test_broadcast_sync_returns_the_position(backend: str) -> None:
    """broadcast_sync() returns the position too (through the hub's loop)."""
    group = new_group()
    first = await broadcast(group, "a")
    assert first is not None
    assert await sync_to_async(broadcast_sync)(group, "b") == Position(2, first.epoch)


async def test_hub_backfills_what_it_missed_after_a_reconnect(backend: str) -> None:
    """Messages the hub's subscription missed are read back on reconnect, or when a later one shows the gap."""
    group = new_group()
    async with connect(url(group)) as ws:
        await joined(ws)
        await broadcast(group, {"n": 0})
        assert (await ws.receive_json())["offset"] == 1
        hub = await get_hub()
        await hub.backend.unsubscribe(group)  # as if the broker connection were down: deliveries are lost
        for n in range(1, 4):
            await broadcast(group, {"n": n})
        await hub.backend.subscribe(group)
        hub.backend.reconnected()  # what a backend calls when its listener is back
        got = [await ws.receive_json() for _ in range(3)]
        assert [m["offset"] for m in got] == [2, 3, 4]
        await hub.backend.unsubscribe(group)
        for n in range(4, 6):
            await broadcast(group, {"n": n})
        await hub.backend.subscribe(group)
        await broadcast(group, {"n": 6})  # arrives live after a gap: 5 and 6 are read back first
        got = [await ws.receive_json() for _ in range(3)]
        assert [m["data"]["n"] for m in got] == [4, 5, 6]
        await broadcast(group, {"n": "sentinel"})
        assert (await ws.receive_json())["data"]["n"] == "sentinel"
        assert hub.streams.gaps == 0


# -- settings ----------------------------------------------------------------------


def test_groups_setting_is_validated() -> None:
    """A malformed GROUPS raises ImproperlyConfigured naming the fix, and the system check reports it."""
    assert parse_groups({"chat.*": {"history": 10, "history_ttl": 60}})[0][1].retention.size == 10  # type: ignore[union-attr]
    for bad, why in [
        ([], "must be a dict"),
        ({"chat.*": {"history": 0}}, "int >= 1"),
        ({"chat.*": {"history": 5, "history_ttl": -1}}, "seconds > 0"),
        ({"chat.*": {"history": 5, "ttl": 3}}, "unknown option"),
        ({"chat.*": 5}, "must be a dict like"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=why):
            parse_groups(bad)


def test_groups_check_and_matching(settings: Any) -> None:
    """The first matching pattern wins; other groups have none; E030 names a broken setting."""
    settings.TETHER = {"GROUPS": {"chat.vip.*": {"history": 2}, "chat.*": {"history": 50}}}
    assert retention_for("chat.vip.x").size == 2  # type: ignore[union-attr]
    assert retention_for("chat.lobby").size == 50  # type: ignore[union-attr]
    assert retention_for("user.1") is None
    assert check_groups() == []
    settings.TETHER = {"GROUPS": {"chat.*": {"history": "lots"}}}
    assert [m.id for m in check_groups()] == ["tether.E030"]


# -- broadcast_on_commit: an outbox on PostgreSQL -----------------------------------


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
@pytest.mark.parametrize("kind", ["history", "live"])
async def test_broadcast_on_commit_is_part_of_the_postgres_transaction(
    settings: Any, postgres: None, kind: str
) -> None:
    """On PostgreSQL the message is written in the caller's transaction: rollback sends nothing, commit once."""
    settings.TETHER = {**BACKENDS["postgres"], "GROUPS": GROUPS}
    group = new_group("hist" if kind == "history" else "live")
    try:
        async with connect(f"/ws/group/{group}/") as ws:
            await ws.receive_json()

            def rolled_back() -> None:
                with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
                    broadcast_on_commit(group, "rolled back", using="pg")
                    raise RuntimeError

            def committed() -> None:
                with transaction.atomic(using="pg"):
                    broadcast_on_commit(group, "committed", using="pg")
                    with connections["pg"].cursor() as cursor:  # the message is in the transaction already
                        cursor.execute("SELECT count(*) FROM tether_history WHERE group_name = %s", [group])
                        assert cursor.fetchone()[0] == (1 if kind == "history" else 0)

            await sync_to_async(rolled_back)()
            await sync_to_async(committed)()
            assert await ws.receive_text() == "committed"
            await broadcast(group, "sentinel")
            assert await ws.receive_text() == "sentinel"
            await sync_to_async(connections.close_all)()  # the thread's connection to the test database
            if kind == "history":
                page = await history(group)
                assert [(m.data, m.position.offset) for m in page.messages] == [
                    ("committed", 1),
                    ("sentinel", 2),
                ]  # the rolled-back one took no offset
    finally:
        await stop_hub()
