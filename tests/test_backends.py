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

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from tests.faultproxy import FaultProxy
from tests.servers import free_port
from tether import BackendUnavailable
from tether.backends.base import Backend, Frame, _Reconnector, decode_payload, encode_payload
from tether.backends.memory import MemoryBackend
from tether.backends.postgres import PostgresBackend
from tether.backends.redis import RedisBackend

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

    def __call__(self, group: str, frame: Frame) -> None:
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


# -- backend-specific failure modes -----------------------------------------------


def test_payload_kind_round_trip_and_garbage() -> None:
    """The wire format keeps the frame kind; an unknown kind byte is a ValueError."""
    assert decode_payload(encode_payload("té")) == "té"
    assert decode_payload(encode_payload(b"t\x00")) == b"t\x00"
    with pytest.raises(ValueError, match="not a tether payload"):
        decode_payload(b"zzz")


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
