"""One contract for every broadcast backend, run against memory, the real Redis and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.servers import free_port
from tether import BackendUnavailable
from tether.backends.base import Backend, Frame, decode_payload, encode_payload
from tether.backends.memory import MemoryBackend

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
