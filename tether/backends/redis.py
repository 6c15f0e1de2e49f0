"""Redis pub/sub backend (``pip install django-tether[redis]``).

Each process holds one pub/sub connection, subscribed to one Redis channel
(``<prefix><group>``) per group that has local members, plus a small pool for
publishing. Pub/sub is at-most-once: a process whose subscriber connection is
down misses what is published meanwhile. The subscriber reconnects with
exponential backoff (0.05 s doubling to 2 s) and resubscribes by itself; on
recovery it logs how long it was down and how many messages this process
published in that time (its own sockets missed them). While Redis can't be
reached, ``publish()`` raises ``BackendUnavailable``.

Options (``TETHER["OPTIONS"]``): ``url`` (default ``redis://127.0.0.1:6379/0``),
``prefix`` (default ``tether:``), ``subscribe_timeout`` in seconds (default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..exceptions import BackendUnavailable
from .base import Backend, Deliver, Frame, _Reconnector, decode_payload, encode_payload

__all__ = ["RedisBackend"]

logger = logging.getLogger("tether.backends.redis")


class RedisBackend(Backend):
    """Pub/sub over one subscriber connection per process, reconnecting on its own."""

    def __init__(
        self,
        deliver: Deliver | None = None,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "tether:",
        subscribe_timeout: float = 5.0,
    ) -> None:
        super().__init__(deliver)
        self.url = url
        self.prefix = prefix
        self.subscribe_timeout = subscribe_timeout
        self.missed = 0  # published by this process while its subscriber was down
        self.failed = 0  # publishes refused because Redis was unreachable
        self._reconnector = _Reconnector(f"Redis subscriber on {url}", lambda: self.missed, logger)
        self._client: redis.Redis | None = None
        self._pubsub: Any = None  # the live PubSub, None while disconnected
        self._wanted: set[bytes] = set()
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()

    def _channel(self, group: str) -> bytes:
        return f"{self.prefix}{group}".encode()

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        )

    def _ensure_listener(self) -> None:
        self._reconnector.ensure_running(self._listen_forever, "tether-redis-listener")

    async def stop(self) -> None:
        await self._reconnector.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._wanted.clear()

    async def subscribe(self, group: str) -> None:
        channel = self._channel(group)
        self._wanted.add(channel)
        self._ensure_listener()
        future = self._confirmed.get(channel)
        if future is not None and future.done() and not future.cancelled():
            return  # already confirmed (and resubscribed by the listener after a reconnect)
        if future is None or future.done():
            future = self._confirmed[channel] = asyncio.get_running_loop().create_future()
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):  # the listener will resubscribe
                    await self._pubsub.subscribe(channel)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.subscribe_timeout)
        except asyncio.TimeoutError:  # what wait_for raises; a TimeoutError only from Python 3.11
            raise BackendUnavailable(
                f"Redis at {self.url} did not confirm the subscription to {group!r} "
                f"within {self.subscribe_timeout}s; it is made when Redis is back"
            ) from None

    async def unsubscribe(self, group: str) -> None:
        channel = self._channel(group)
        self._wanted.discard(channel)
        future = self._confirmed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    @property
    def reconnects(self) -> int:
        """How many times the listener reconnected after losing its connection."""
        return self._reconnector.count

    async def publish(self, group: str, frame: Frame) -> None:
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            await self._client.publish(self._channel(group), encode_payload(frame))
        except (RedisError, OSError) as exc:
            self.failed += 1
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        if self._reconnector.task is not None and not self._connected.is_set():
            self.missed += 1

    async def _listen_forever(self) -> None:
        """Hold the subscriber connection: (re)connect, resubscribe, deliver; back off on failure."""
        reconnector = self._reconnector
        while True:
            assert self._client is not None
            pubsub: Any = self._client.pubsub()
            try:
                await pubsub.connect()
                if self._wanted:
                    await pubsub.subscribe(*self._wanted)
                self._pubsub = pubsub
                self._connected.set()
                reconnector.connected(len(self._wanted))
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._handle(message)
            except (RedisError, OSError) as exc:
                reconnector.lost(exc)
            finally:
                self._pubsub = None
                self._connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await reconnector.backoff()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == b"message" or kind == "message":
            channel: bytes = message["channel"]
            try:
                frame = decode_payload(message["data"])
            except (ValueError, UnicodeDecodeError):
                logger.warning("Ignored a malformed payload on Redis channel %r", channel)
                return
            self.deliver(channel[len(self.prefix.encode()) :].decode(), frame)
        elif kind == b"subscribe" or kind == "subscribe":
            future = self._confirmed.get(message["channel"])
            if future is not None and not future.done():
                future.set_result(None)
