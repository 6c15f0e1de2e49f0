"""One contract for every broadcast backend, run against memory, the real Redis and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from tests.faultproxy import FaultProxy
from tests.servers import free_port
from tether import BackendUnavailable, broadcast
from tether.backends.base import (
    Backend,
    Frame,
    _Reconnector,
    decode_message,
    decode_payload,
    encode_entry,
    encode_payload,
)
from tether.backends.memory import MemoryBackend
from tether.backends.postgres import PostgresBackend, channel_for, connection_params
from tether.backends.redis import RedisBackend
from tether.hub import stop_hub
from tether.positions import Position, Retention
from tether.testing import connect

ROOT = Path(__file__).resolve().parent.parent


def migrate_pg() -> None:
    """Create tether's payload table in the "pg" database (idempotent)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "tether", "--database", "pg", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def pg_migrated() -> None:
    migrate_pg()


class Inbox:
    """Collects what a backend delivers, for one simulated process."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Frame]] = asyncio.Queue()
        self.positions: list[Position] = []  # of the history messages, in delivery order

    def __call__(self, group: str, frame: Frame, position: Position | None = None) -> None:
        if position is not None:
            self.positions.append(position)
        self.queue.put_nowait((group, frame))

    async def take(self, n: int) -> list[tuple[str, Frame]]:
        return [await asyncio.wait_for(self.queue.get(), 5) for _ in range(n)]


BackendFactory = Callable[[Inbox | None], Backend]


@pytest.fixture(params=["memory", "redis", "postgres"])
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """Builds started backends of one kind (each instance stands for one process) and stops them after."""
    kind = request.param
    if kind == "redis":
        request.getfixturevalue("redis_server")
        from tether.backends.redis import RedisBackend

        def build(inbox: Inbox | None) -> Backend:
            return RedisBackend(inbox, url="redis://127.0.0.1:6379/0", prefix="tether-contract:")
    elif kind == "postgres":
        request.getfixturevalue("postgres")
        request.getfixturevalue("pg_migrated")
        from tether.backends.postgres import PostgresBackend

        def build(inbox: Inbox | None) -> Backend:
            return PostgresBackend(inbox, database="pg")
    else:

        def build(inbox: Inbox | None) -> Backend:
            return MemoryBackend(inbox)

    built: list[Backend] = []

    def factory(inbox: Inbox | None) -> Backend:
        backend = build(inbox)
        built.append(backend)
        return backend

    factory.kind = kind  # type: ignore[attr-defined]
    yield factory
    for backend in built:
        await backend.stop()


async def started(backend: Backend) -> Backend:
    await backend.start()
    return backend


def new_group() -> str:
    return f"contract.{uuid.uuid4().hex[:12]}"


async def test_publish_reaches_every_subscriber_in_order(make_backend: BackendFactory) -> None:
    """Frames reach every subscribed instance in publish order, text staying text and bytes bytes."""
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = await started(make_backend(inbox_a)), await started(make_backend(inbox_b))
    group = new_group()
    await a.subscribe(group)
    await b.subscribe(group)
    frames: list[Frame] = [f"text {n} ✓" if n % 2 else f"bin {n}".encode() for n in range(40)]
    for frame in frames:
        await a.publish(group, frame)
    for inbox in (inbox_a, inbox_b):
        assert await inbox.take(40) == [(group, frame) for frame in frames]


async def test_unsubscribe_stops_delivery(make_backend: BackendFactory) -> None:
    """After unsubscribe() an instance gets nothing more of that group."""
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = await started(make_backend(inbox_a)), await started(make_backend(inbox_b))
    group = new_group()
    await a.subscribe(group)
    await b.subscribe(group)
    await b.unsubscribe(group)
    await b.unsubscribe(group)  # idempotent
    await b.publish(group, "after")
    await b.publish(group, "end")
    assert await inbox_a.take(2) == [(group, "after"), (group, "end")]
    assert inbox_b.queue.empty()


async def test_subscribe_is_idempotent(make_backend: BackendFactory) -> None:
    """Subscribing twice still delivers each frame once."""
    inbox = Inbox()
    backend = await started(make_backend(inbox))
    group = new_group()
    await backend.subscribe(group)
    await backend.subscribe(group)
    await backend.publish(group, "one")
    await backend.publish(group, "two")
    assert await inbox.take(2) == [(group, "one"), (group, "two")]
    assert inbox.queue.empty()


@pytest.mark.parametrize(
    "frame",
    ["x" * 9000, "é" * 3000, "nul \x00 inside", "", b"\x00" * 9000, b"", "🙂" * 2100],
    ids=["9000-byte-text", "multibyte-text", "nul-text", "empty-text", "9000-byte-binary", "empty-binary", "emoji"],
)
async def test_payloads_arrive_whole(make_backend: BackendFactory, frame: Frame) -> None:
    """Big (over NOTIFY's 8000 bytes), multibyte, NUL-bearing and empty frames arrive whole and of the same kind."""
    inbox = Inbox()
    backend = await started(make_backend(inbox))
    group = new_group()
    await backend.subscribe(group)
    await backend.publish(group, frame)
    await backend.publish(group, "after")
    assert await inbox.take(2) == [(group, frame), (group, "after")]


async def test_publish_only_instance_and_no_subscribers(make_backend: BackendFactory) -> None:
    """An instance with no deliver callable can publish, and publishing to an empty group is fine."""
    inbox = Inbox()
    listener = await started(make_backend(inbox))
    publisher = await started(make_backend(None))
    group = new_group()
    await publisher.publish(new_group(), "nobody listens")
    await listener.subscribe(group)
    await publisher.publish(group, "hello")
    assert await inbox.take(1) == [(group, "hello")]


async def test_stop_is_idempotent_and_ends_delivery(make_backend: BackendFactory) -> None:
    """stop() twice is fine, and a stopped instance receives nothing."""
    inbox_a, inbox_b = Inbox(), Inbox()
    a, b = await started(make_backend(inbox_a)), await started(make_backend(inbox_b))
    group = new_group()
    await a.subscribe(group)
    await b.subscribe(group)
    await b.stop()
    await b.stop()
    await a.publish(group, "after stop")
    assert await inbox_a.take(1) == [(group, "after stop")]
    assert inbox_b.queue.empty()


# -- history ----------------------------------------------------------------------

KEEP = Retention(size=100)


async def lose_stream(kind: str, group: str) -> None:
    """Make ``group``'s stream vanish as a flush, a truncate or a restart would (for this group only:
    the shared Redis and PostgreSQL are never flushed)."""
    if kind == "memory":
        MemoryBackend.lose_history(group)
    elif kind == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        await client.delete(*(f"tether-contract:{k}:{group}" for k in ("stream", "top", "epoch")))
        await client.aclose()
    else:
        import psycopg

        from tether.backends.postgres import connection_params

        async with await psycopg.AsyncConnection.connect(**connection_params("pg"), autocommit=True) as conn:
            await conn.execute("DELETE FROM tether_stream WHERE group_name = %s", (group,))
            await conn.execute("DELETE FROM tether_history WHERE group_name = %s", (group,))


async def test_history_positions_count_by_one_across_instances(make_backend: BackendFactory) -> None:
    """append() from two instances gives offsets 1, 2, 3... in one epoch; subscribers get each with its position."""
    inbox = Inbox()
    a, b = await started(make_backend(inbox)), await started(make_backend(None))
    group = new_group()
    await a.subscribe(group)
    positions = [await (a if n % 2 else b).append(group, f"m{n}", KEEP) for n in range(6)]
    epoch = positions[0].epoch
    assert positions == [Position(n, epoch) for n in range(1, 7)]
    assert await inbox.take(6) == [(group, f"m{n}") for n in range(6)]
    assert inbox.positions == positions


async def test_history_read_after_and_latest(make_backend: BackendFactory) -> None:
    """read() gives the entries after an offset (at most limit), or the last ones; text and bytes kept."""
    backend = await started(make_backend(None))
    group = new_group()
    frames: list[Frame] = [f"m{n}" if n % 2 else f"b{n}".encode() for n in range(10)]
    for frame in frames:
        await backend.append(group, frame, KEEP)
    window = await backend.read(group, 3, 4, KEEP)
    assert (window.top, window.first) == (10, 1)
    assert window.entries == [(4, frames[3]), (5, frames[4]), (6, frames[5]), (7, frames[6])]
    assert (await backend.read(group, None, 3, KEEP)).entries == [(8, frames[7]), (9, frames[8]), (10, frames[9])]
    assert (await backend.read(group, 10, 5, KEEP)).entries == []
    assert (await backend.read(group, None, 0, KEEP)).entries == []


async def test_history_big_payload_keeps_its_position(make_backend: BackendFactory) -> None:
    """A message too big for a NOTIFY arrives whole, with its position, and reads back whole."""
    inbox = Inbox()
    backend = await started(make_backend(inbox))
    group = new_group()
    await backend.subscribe(group)
    big = "é" * 9000
    position = await backend.append(group, big, KEEP)
    assert await inbox.take(1) == [(group, big)]
    assert inbox.positions == [position]
    assert (await backend.read(group, 0, 10, KEEP)).entries == [(1, big)]


async def test_history_epoch_is_set_before_the_first_message(make_backend: BackendFactory) -> None:
    """Reading an empty stream fixes its epoch: position (0, epoch) then covers the first message."""
    backend = await started(make_backend(None))
    group = new_group()
    empty = await backend.read(group, None, 10, KEEP)
    assert (empty.top, empty.first, empty.entries) == (0, 1, [])
    assert empty.holds_after(Position(0, empty.epoch))
    assert await backend.append(group, "first", KEEP) == Position(1, empty.epoch)
    window = await backend.read(group, 0, 10, KEEP)
    assert window.holds_after(Position(0, empty.epoch))
    assert window.entries == [(1, "first")]


async def test_history_retention_by_length(make_backend: BackendFactory) -> None:
    """Only the last `history` messages are kept: a position before them is outside the window."""
    backend = await started(make_backend(None))
    group = new_group()
    small = Retention(size=3)
    positions = [await backend.append(group, f"m{n}", small) for n in range(5)]
    window = await backend.read(group, None, 10, small)
    assert (window.first, window.top) == (3, 5)
    assert window.entries == [(3, "m2"), (4, "m3"), (5, "m4")]
    assert window.holds_after(positions[1])  # 2: everything after it (3, 4, 5) is held
    assert not window.holds_after(positions[0])  # 1: message 2 is gone


async def test_history_retention_by_age(make_backend: BackendFactory) -> None:
    """Messages older than `history_ttl` leave the window (read-side too, without a new append)."""
    backend = await started(make_backend(None))
    group = new_group()
    brief = Retention(size=100, ttl=0.3)
    old = await backend.append(group, "old", brief)
    assert (await backend.read(group, None, 10, brief)).entries == [(1, "old")]
    for _ in range(200):  # bounded poll: at most ~4 s
        if not (await backend.read(group, None, 10, brief)).entries:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the message outlived its history_ttl")
    new = await backend.append(group, "new", brief)
    window = await backend.read(group, None, 10, brief)
    assert window.entries == [(new.offset, "new")]
    assert not window.holds_after(Position(0, old.epoch))  # "old" is gone: a position before it is stale
    assert window.holds_after(new) and window.holds_after(Position(new.offset - 1, new.epoch))


async def test_history_epoch_changes_when_the_stream_is_lost(make_backend: BackendFactory) -> None:
    """After the stream vanishes, a new epoch starts at offset 1, and the old positions are stale, not misread."""
    backend = await started(make_backend(None))
    group = new_group()
    for n in range(3):
        before = await backend.append(group, f"m{n}", KEEP)
    await lose_stream(make_backend.kind, group)  # type: ignore[attr-defined]
    after = await backend.append(group, "again", KEEP)
    assert after.offset == 1 and after.epoch != before.epoch
    window = await backend.read(group, 1, 10, KEEP)
    assert window.epoch == after.epoch
    assert not window.holds_after(Position(1, before.epoch))


async def test_history_concurrent_appends_are_gap_free_and_delivered_in_order(make_backend: BackendFactory) -> None:
    """4 tasks on 2 instances append 100 messages each at once: offsets 1..400, each once, delivered in order."""
    inbox = Inbox()
    listener = await started(make_backend(inbox))
    publishers = [await started(make_backend(None)) for _ in range(2)]
    group = new_group()
    await listener.subscribe(group)

    async def publish(task: int) -> list[int]:
        backend = publishers[task % 2]
        return [(await backend.append(group, f"{task}:{n}", Retention(size=1000))).offset for n in range(100)]

    offsets = await asyncio.gather(*(publish(task) for task in range(4)))
    assert sorted(o for mine in offsets for o in mine) == list(range(1, 401))
    assert all(mine == sorted(mine) for mine in offsets)
    frames = [frame for _, frame in await inbox.take(400)]
    assert [p.offset for p in inbox.positions] == list(range(1, 401))
    for task in range(4):
        assert [f for f in frames if isinstance(f, str) and f.startswith(f"{task}:")] == [
            f"{task}:{n}" for n in range(100)
        ]


# -- backend-specific failure modes -----------------------------------------------


def test_payload_kind_round_trip_and_garbage() -> None:
    """The wire format keeps the frame kind (and a history message's position); garbage is a ValueError."""
    assert decode_payload(encode_payload("té")) == "té"
    assert decode_payload(encode_payload(b"t\x00")) == b"t\x00"
    with pytest.raises(ValueError, match="not a tether payload"):
        decode_payload(b"zzz")
    assert decode_message(encode_entry(Position(7, "abc"), b"x\ny")) == (b"x\ny", Position(7, "abc"))
    assert decode_message(encode_payload("plain")) == ("plain", None)
    with pytest.raises(ValueError):
        decode_message(b"p12")


async def test_redis_unreachable_raises_backend_unavailable(redis_server: None) -> None:
    """Publishing with Redis unreachable raises BackendUnavailable naming the URL; nothing hangs."""
    from tether.backends.redis import RedisBackend

    url = f"redis://127.0.0.1:{free_port()}/0"
    backend = RedisBackend(url=url)
    await backend.start()
    try:
        with pytest.raises(BackendUnavailable, match=url):
            await backend.publish("g", "x")
        assert backend.failed == 1
    finally:
        await backend.stop()


async def test_redis_subscribe_unconfirmed_raises_backend_unavailable(redis_server: None) -> None:
    """A subscription Redis can't confirm raises BackendUnavailable after subscribe_timeout."""
    from tether.backends.redis import RedisBackend

    backend = RedisBackend(url=f"redis://127.0.0.1:{free_port()}/0", subscribe_timeout=0.3)
    await backend.start()
    try:
        with pytest.raises(BackendUnavailable, match="when Redis is back"):
            await backend.subscribe("g")
    finally:
        await backend.stop()


async def test_postgres_backend_needs_a_postgres_alias() -> None:
    """The PostgreSQL backend refuses a non-PostgreSQL or unknown alias with ImproperlyConfigured."""
    from tether.backends.postgres import PostgresBackend

    with pytest.raises(ImproperlyConfigured, match="'default' is sqlite"):
        await PostgresBackend(database="default").start()
    with pytest.raises(ImproperlyConfigured, match=r"not in settings\.DATABASES"):
        await PostgresBackend(database="nope").start()


def test_postgres_channel_names_fit_identifiers() -> None:
    """Every group maps to a distinct channel of at most 63 bytes."""
    from tether.backends.postgres import channel_for

    long_a, long_b = "a" * 99 + "x", "a" * 99 + "y"
    assert len(channel_for(long_a).encode()) <= 63
    assert channel_for(long_a) != channel_for(long_b)
    assert channel_for("chat.lobby") == channel_for("chat.lobby")


def test_memory_backend_rejects_options() -> None:
    """A typo'd OPTIONS for the memory backend fails loudly."""
    with pytest.raises(TypeError, match="takes no OPTIONS"):
        MemoryBackend(None, url="redis://")


# -- races, every backend -----------------------------------------------------------


async def test_two_subscribes_at_once_on_a_fresh_instance(make_backend: BackendFactory) -> None:
    """Two tasks subscribing at once to a fresh instance both get their group, each frame once."""
    inbox = Inbox()
    backend = await started(make_backend(inbox))
    one, two = new_group(), new_group()
    await asyncio.gather(backend.subscribe(one), backend.subscribe(two))
    await backend.publish(one, "one")
    await backend.publish(two, "two")
    await backend.publish(one, "end")
    assert await inbox.take(3) == [(one, "one"), (two, "two"), (one, "end")]


async def test_publish_while_subscribing_other_groups_loses_nothing(make_backend: BackendFactory) -> None:
    """2,000 frames to A all arrive, in order, while the same instance subscribes and unsubscribes B..Z."""
    inbox = Inbox()
    backend = await started(make_backend(inbox))
    steady, others = new_group(), [new_group() for _ in range(25)]
    await backend.subscribe(steady)
    done = asyncio.Event()

    async def churn() -> int:
        rounds = 0
        while not done.is_set():
            for group in others:
                await backend.subscribe(group)
            for group in others:
                await backend.unsubscribe(group)
            rounds += 1
            await asyncio.sleep(0)  # memory never suspends: let the publisher run between rounds
        return rounds

    async def publish() -> None:
        for n in range(2000):
            await backend.publish(steady, str(n))
        done.set()

    rounds, _ = await asyncio.gather(churn(), publish())
    assert rounds >= 1
    got = await inbox.take(2000)
    assert [frame for _, frame in got] == [str(n) for n in range(2000)]


class FlakyInbox(Inbox):
    """An inbox whose delivery raises on the frame "boom", as a bug in a hub or a watcher would."""

    def __call__(self, group: str, frame: Frame) -> None:
        if frame == "boom":
            raise RuntimeError("delivery failed on purpose")
        super().__call__(group, frame)


async def test_a_failing_delivery_loses_that_frame_only(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception raised while delivering is logged; the publisher never sees it and later frames arrive."""
    inbox = FlakyInbox()
    backend = await started(make_backend(inbox))
    group = new_group()
    await backend.subscribe(group)
    await backend.publish(group, "boom")
    await backend.publish(group, "after")
    assert await inbox.take(1) == [(group, "after")]
    assert "delivery failed on purpose" in caplog.text


# -- broker faults, through the fault proxy (Redis and PostgreSQL) ---------------------


class Faulty:
    """Builds backends that reach the broker through ``proxy`` (``build``) or directly (``direct``)."""

    def __init__(self, kind: str, proxy: FaultProxy) -> None:
        self.kind = kind
        self.proxy = proxy
        self.alias = f"pg_proxy_{proxy.port}"
        self.built: list[Backend] = []

    def _make(self, inbox: Inbox | None, proxied: bool, options: dict[str, Any]) -> Backend:
        backend: Backend
        if self.kind == "redis":
            port = self.proxy.port if proxied else 6379
            backend = RedisBackend(inbox, url=f"redis://127.0.0.1:{port}/0", prefix="tether-fault:", **options)
        else:
            backend = PostgresBackend(inbox, database=self.alias if proxied else "pg", **options)
        self.built.append(backend)
        return backend

    def build(self, inbox: Inbox | None, **options: Any) -> Backend:
        return self._make(inbox, True, options)

    def direct(self, inbox: Inbox | None, **options: Any) -> Backend:
        return self._make(inbox, False, options)


@pytest.fixture(params=["redis", "postgres"])
async def faulty(request: pytest.FixtureRequest) -> AsyncIterator[Faulty]:
    """A fault proxy in front of the machine's Redis or PostgreSQL (which the tests never touch)."""
    if request.param == "redis":
        request.getfixturevalue("redis_server")
        port = 6379
    else:
        request.getfixturevalue("postgres")
        request.getfixturevalue("pg_migrated")
        port = 5432
    async with FaultProxy(port) as proxy:
        faulty = Faulty(request.param, proxy)
        if request.param == "postgres":
            connections.settings[faulty.alias] = {**connections.settings["pg"], "PORT": str(proxy.port)}
        try:
            yield faulty
        finally:
            await proxy.restore()
            for backend in faulty.built:
                await backend.stop()
            connections.settings.pop(faulty.alias, None)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Bounded poll for state the tests can't await directly (a counter in another component)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)


async def test_join_during_reconnect_is_made(faulty: Faulty) -> None:
    """Groups subscribed while the listener reconnects (one per loop turn, throughout it) are all delivered."""
    inbox = Inbox()
    backend = await started(faulty.build(inbox, subscribe_timeout=3))
    publisher = await started(faulty.direct(None))
    await backend.subscribe(new_group())
    faulty.proxy.refuse()
    await faulty.proxy.cut()
    accepted = faulty.proxy.accepted
    await faulty.proxy.restore()
    await wait_until(lambda: faulty.proxy.accepted > accepted, what="the listener's new connection")
    groups: list[str] = []
    joins: list[asyncio.Task[None]] = []
    for _ in range(300):  # the reconnect takes a few dozen loop turns: joins before, during and after it
        groups.append(new_group())
        joins.append(asyncio.create_task(backend.subscribe(groups[-1])))
        await asyncio.sleep(0)  # one join per loop turn, so one lands in every await of the reconnect
    await asyncio.gather(*joins)
    for group in groups:
        await publisher.publish(group, "hello")
    assert sorted(await inbox.take(len(groups))) == sorted((group, "hello") for group in groups)


async def test_redis_join_inside_the_listeners_resubscribe_is_made(
    redis_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscribe() made exactly while the listener's (re)connect sends its SUBSCRIBE (at startup and
    after a cut) is made too: the listener had snapshotted the wanted groups and published its pubsub
    after the await, so such a group stayed deaf until the next reconnect."""
    from redis.asyncio.client import PubSub

    async with FaultProxy(6379) as proxy:
        inbox = Inbox()
        backend = RedisBackend(
            inbox, url=f"redis://127.0.0.1:{proxy.port}/0", prefix="tether-fault:", subscribe_timeout=2
        )
        publisher = RedisBackend(None, url="redis://127.0.0.1:6379/0", prefix="tether-fault:")
        injected: list[str] = []
        joins: list[asyncio.Task[None]] = []
        handshakes: list[Any] = []  # the listener's pubsub objects: one per (re)connect
        reconnected = asyncio.Event()
        original = PubSub.subscribe

        async def subscribe(pubsub: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(pubsub, *args, **kwargs)
            if pubsub is not backend._pubsub and pubsub not in handshakes:  # a (re)connect's first SUBSCRIBE
                handshakes.append(pubsub)
                group = new_group()
                injected.append(group)
                joins.append(asyncio.create_task(backend.subscribe(group)))
                channel = backend._channel(group)
                while channel not in backend._wanted:  # noqa: ASYNC110 (the join runs up to its wait for Redis)
                    await asyncio.sleep(0)
                if len(handshakes) == 2:
                    reconnected.set()
            return result

        monkeypatch.setattr(PubSub, "subscribe", subscribe)
        try:
            await backend.start()
            await publisher.start()
            steady = new_group()

            async def delivered(groups: list[str]) -> None:
                for group in groups:
                    await publisher.publish(group, f"to {group}")
                await publisher.publish(steady, "sentinel")  # published last: what was made arrived before it
                received = []
                while (item := (await inbox.take(1))[0]) != (steady, "sentinel"):
                    received.append(item)
                assert sorted(received) == sorted((group, f"to {group}") for group in groups)

            await backend.subscribe(steady)  # starts the listener: its first handshake injects a join
            await asyncio.gather(*joins)  # the old listener never made it: BackendUnavailable after 2 s
            assert len(injected) == 1
            await delivered(injected)
            await proxy.cut()  # the listener reconnects: its handshake injects another join
            await asyncio.wait_for(reconnected.wait(), 5)
            await asyncio.gather(*joins)
            assert len(injected) == 2
            await delivered(injected)
        finally:
            for joined in joins:
                joined.cancel()
            await backend.stop()
            await publisher.stop()


async def test_join_while_the_broker_is_unreachable_is_kept_and_delivered_once_it_is_back(
    faulty: Faulty, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket joins while the broker refuses connections: the join is kept with a warning (on Python 3.10
    too, where wait_for's asyncio.TimeoutError is not TimeoutError and crashed the handler), and once the
    broker answers again a broadcast reaches the socket."""
    if faulty.kind == "redis":
        options: dict[str, Any] = {"url": f"redis://127.0.0.1:{faulty.proxy.port}/0", "prefix": "tether-fault:"}
        settings.TETHER = {"BACKEND": "tether.backends.redis.RedisBackend", "OPTIONS": options}
    else:
        options = {"database": faulty.alias}
        settings.TETHER = {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": options}
    options.update(timeout=1, subscribe_timeout=0.3)
    group = new_group()
    faulty.proxy.refuse()
    try:
        async with connect(f"/ws/group/{group}/") as ws:
            assert await ws.receive_json() == {"joined": group}
            assert f"Group {group} joined while the broker is unreachable" in caplog.text
            assert "it is kept" in caplog.text
            await faulty.proxy.restore()
            await broadcast(group, "back")  # through the same backend: it reconnects its listener first
            assert await ws.receive_text() == "back"
    finally:
        await stop_hub()


async def test_postgres_a_blocked_payload_fetch_does_not_hold_up_publishing(postgres: None, pg_migrated: None) -> None:
    """A payload over 8,000 bytes is fetched on a connection of its own: while that fetch is blocked
    (its table locked), publishing to another group completes at once, and the payload arrives after."""
    schema = f"tether_fault_{uuid.uuid4().hex[:12]}"  # a private copy of the table: the shared one is never locked
    alias = f"pg_{schema}"
    base = connections.settings["pg"]
    connections.settings[alias] = {
        **base,
        "OPTIONS": {**base.get("OPTIONS", {}), "options": f"-c search_path={schema}"},
    }
    admin = await psycopg.AsyncConnection.connect(**connection_params("pg"), autocommit=True)
    locker = await psycopg.AsyncConnection.connect(**connection_params("pg"))
    inbox = Inbox()
    backend = PostgresBackend(inbox, database=alias)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.execute(f"CREATE TABLE {schema}.tether_payload (LIKE public.tether_payload INCLUDING ALL)")
        await backend.start()
        big, other = new_group(), new_group()
        await backend.subscribe(big)
        await backend.publish(other, "warm")  # the publishing connection is open
        big_frame = "x" * 9000
        cursor = await admin.execute(
            f"INSERT INTO {schema}.tether_payload (channel, data) VALUES (%s, %s) RETURNING id",
            (channel_for(big), encode_payload(big_frame)),
        )
        row = await cursor.fetchone()
        assert row is not None
        await locker.execute(f"LOCK TABLE {schema}.tether_payload IN ACCESS EXCLUSIVE MODE")  # until commit
        await admin.execute("SELECT pg_notify(%s, %s)", (channel_for(big), f"r{row[0]}"))

        async def fetch_waits() -> bool:
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                (f"{schema}.tether_payload",),
            )
            found = await cursor.fetchone()
            return bool(found and found[0])

        deadline = time.monotonic() + 10
        while not await fetch_waits():  # the listener's fetch is now blocked on the lock, inside the backend
            assert time.monotonic() < deadline, "the listener never fetched the payload"
            await asyncio.sleep(0.005)
        began = time.monotonic()
        await asyncio.wait_for(backend.publish(other, "not held up"), 1)
        assert time.monotonic() - began < 0.5
        await locker.commit()
        assert await inbox.take(1) == [(big, big_frame)]
    finally:
        await locker.rollback()
        await backend.stop()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
        await locker.close()
        connections.settings.pop(alias, None)


async def test_blackholed_broker_publish_raises_within_the_timeout(faulty: Faulty) -> None:
    """A broker that accepts but never answers: publish raises BackendUnavailable within OPTIONS["timeout"],
    on an open connection and on a new one, while the event loop keeps ticking."""
    warm = await started(faulty.build(None, timeout=0.5))
    await warm.publish(new_group(), "warm")
    faulty.proxy.blackhole()
    cold = await started(faulty.build(None, timeout=0.5))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        for backend in (warm, cold):
            began, ticked = time.monotonic(), ticks
            with pytest.raises(BackendUnavailable, match=r"within 0\.5s"):
                await backend.publish(new_group(), "lost")
            assert time.monotonic() - began < 1.5
            assert ticks - ticked >= 10  # about 50 in 0.5 s: the loop was never blocked
    finally:
        ticker.cancel()


async def test_publish_after_the_broker_answers_again_reaches_this_process(faulty: Faulty) -> None:
    """Cut and refused, then restored: the first publish that succeeds reaches this process's own listener."""
    inbox = Inbox()
    backend = await started(faulty.build(inbox))
    group = new_group()
    await backend.subscribe(group)
    faulty.proxy.refuse()
    await faulty.proxy.cut()
    with pytest.raises(BackendUnavailable):
        await backend.publish(group, "while down")
    await asyncio.sleep(0.5)  # the length of the outage: the listener backs off meanwhile
    await faulty.proxy.restore()
    await backend.publish(group, "first after")
    assert await inbox.take(1) == [(group, "first after")]
    assert backend.missed == 0  # type: ignore[attr-defined]


async def test_delivery_resumes_within_half_a_second_of_the_broker_answering(
    faulty: Faulty, caplog: pytest.LogCaptureFixture
) -> None:
    """After a 2 s cut, frames another process publishes arrive again within 0.5 s of the restore; both ends logged."""
    inbox = Inbox()
    listener = await started(faulty.build(inbox))
    publisher = await started(faulty.direct(None))
    group = new_group()
    await listener.subscribe(group)
    faulty.proxy.refuse()
    await faulty.proxy.cut()
    await asyncio.sleep(2)  # the length of the outage: the listener backs off meanwhile
    await faulty.proxy.restore()
    restored = time.monotonic()
    n = 0
    while True:
        n += 1
        await publisher.publish(group, f"probe {n}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(inbox.queue.get(), 0.02)
            break
        assert time.monotonic() - restored < 10, "delivery did not resume"
    assert time.monotonic() - restored < 0.5
    assert " lost (" in caplog.text and "reconnected after" in caplog.text


# -- the listener task ------------------------------------------------------------------


async def test_reconnector_cancel_keeps_its_callers_cancellation() -> None:
    """Cancelling a task that is inside _Reconnector.cancel() (stop() at shutdown) cancels that task."""
    reconnector = _Reconnector("test listener", lambda: 0, logging.getLogger("tests"))
    running, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def listen() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
            await asyncio.shield(release.wait())  # a listener that takes a moment to close its connection

    reconnector.ensure_running(listen, "test-listener")
    await running.wait()
    stopper = asyncio.create_task(reconnector.cancel())
    await cancelled.wait()  # the stopper now waits for the listener
    stopper.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled()


async def test_reconnector_cancel_ends_a_listener_that_swallowed_one_cancellation() -> None:
    """A listener that lost one cancellation (asyncio.wait_for before Python 3.12 can swallow one that
    arrives as its inner await completes) is cancelled again: stop() ends it instead of hanging."""
    reconnector = _Reconnector("test listener", lambda: 0, logging.getLogger("tests"))
    running, swallowed = asyncio.Event(), asyncio.Event()

    async def listen() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()  # as the lost one leaves it
            swallowed.set()
        await asyncio.Event().wait()  # goes on listening, as if nothing happened

    reconnector.ensure_running(listen, "test-listener")
    task = reconnector.task
    assert task is not None
    await running.wait()
    await reconnector.cancel()
    assert swallowed.is_set() and task.cancelled()


async def test_ensure_running_restarts_a_dead_listener(caplog: pytest.LogCaptureFixture) -> None:
    """A listener task that died of an exception is logged and started again, by itself and by ensure_running."""
    reconnector = _Reconnector("test listener", lambda: 0, logging.getLogger("tests"))
    runs: list[int] = []
    second = asyncio.Event()

    async def listen() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("listener bug")
        second.set()
        await asyncio.Event().wait()

    reconnector.ensure_running(listen, "test-listener")
    await asyncio.wait_for(second.wait(), 5)
    assert "listener bug" in caplog.text
    task = reconnector.task
    reconnector.ensure_running(listen, "test-listener")
    assert reconnector.task is task and len(runs) == 2  # a live one is left alone
    await reconnector.cancel()
