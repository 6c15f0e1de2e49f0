"""Redis pub/sub backend (``pip install django-tether[redis]``).

Each process holds one pub/sub connection, subscribed to one Redis channel
(``<prefix><group>``) per group that has local members, plus a small pool for
publishing. Pub/sub is at-most-once: a process whose subscriber connection is
down misses what is published meanwhile. The subscriber reconnects with
exponential backoff (0.02 s doubling to 0.1 s, and at once when this process
publishes) and resubscribes by itself; on recovery it logs how long it was down
and how many messages this process published in that time (its own sockets
missed them). A publish while the subscriber is down first gives it one try to
reconnect, so once Redis answers again what this process publishes reaches its
own sockets too. While Redis can't be reached, ``publish()`` raises
``BackendUnavailable``.

Options (``TETHER["OPTIONS"]``): ``url`` (default ``redis://127.0.0.1:6379/0``),
``prefix`` (default ``tether:``), ``timeout`` in seconds for every call to Redis
(connect, publish, the subscriber's handshake; default 5: long enough for a busy
Redis, short enough that a hung one surfaces as ``BackendUnavailable`` before a
client gives up), ``subscribe_timeout`` in seconds (default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import BackendUnavailable
from .base import Backend, Deliver, Frame, _Reconnector, decode_payload, deliver_safely, encode_payload

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
        timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        super().__init__(deliver)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.subscribe_timeout = subscribe_timeout
        self.missed = 0  # published by this process while its subscriber was down
        self.failed = 0  # publishes refused because Redis was unreachable
        self._reconnector = _Reconnector(f"Redis subscriber on {url}", lambda: self.missed, logger)
        self._client: redis.Redis | None = None
        self._listener_client: redis.Redis | None = None
        self._pubsub: Any = None  # the live PubSub, None while disconnected
        self._wanted: set[bytes] = set()
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._sending = asyncio.Lock()  # one (UN)SUBSCRIBE at a time on the subscriber connection

    def _channel(self, group: str) -> bytes:
        return f"{self.prefix}{group}".encode()

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = redis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        )
        # No retries on the subscriber: redis-py would reconnect it silently, losing what was published
        # meanwhile without a log line; the listener reconnects itself, and says so.
        self._listener_client = redis.Redis.from_url(
            self.url, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0)
        )

    def _ensure_listener(self) -> None:
        self._reconnector.ensure_running(self._listen_forever, "tether-redis-listener")

    async def stop(self) -> None:
        await self._reconnector.cancel()
        for client in (self._client, self._listener_client):
            if client is not None:
                await client.aclose()
        self._client = self._listener_client = None
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
            async with self._sending:
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):  # the listener will resubscribe
                        await self._pubsub.subscribe(channel)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.subscribe_timeout)
        except (asyncio.TimeoutError, TimeoutError):  # two classes on Python 3.10
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
        async with self._sending:
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    @property
    def reconnects(self) -> int:
        """How many times the listener reconnected after losing its connection."""
        return self._reconnector.count

    async def publish(self, group: str, frame: Frame) -> None:
        """Publish, within ``timeout`` seconds or ``BackendUnavailable``; nothing is sent twice."""
        if self._client is None:
            await self.start()
        try:
            await asyncio.wait_for(self._publish(self._channel(group), encode_payload(frame)), self.timeout)
        except (RedisTimeoutError, asyncio.TimeoutError, TimeoutError):  # asyncio's is another class on 3.10
            self.failed += 1
            raise BackendUnavailable(f"Redis at {self.url} did not answer within {self.timeout}s") from None
        except (RedisError, OSError) as exc:
            self.failed += 1
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    async def _publish(self, channel: bytes, payload: bytes) -> None:
        listening = self._reconnector.task is not None
        if listening and not self._connected.is_set():
            await self._reconnector.retry_now(self.timeout)
        assert self._client is not None
        await self._client.publish(channel, payload)
        if listening and not self._connected.is_set():
            self.missed += 1

    async def _subscribe_wanted(self, pubsub: Any) -> None:
        """Connect ``pubsub`` and subscribe it to the wanted channels, including those wanted meanwhile."""
        await pubsub.connect()
        done: set[bytes] = set()
        while True:  # a subscribe() or unsubscribe() during these awaits is caught up on the next turn
            missing, extra = self._wanted - done, done - self._wanted
            if not missing and not extra:
                return
            if missing:
                await pubsub.subscribe(*missing)
                done |= missing
            if extra:
                await pubsub.unsubscribe(*extra)
                done -= extra

    async def _listen_forever(self) -> None:
        """Hold the subscriber connection: (re)connect, resubscribe, deliver; back off on failure.

        Any exception is a lost connection (logged with its traceback if it is not a
        driver error); only cancellation ends it.
        """
        reconnector = self._reconnector
        while True:
            if self._listener_client is None:
                await self.start()
            assert self._listener_client is not None
            pubsub: Any = self._listener_client.pubsub()
            try:
                await asyncio.wait_for(self._subscribe_wanted(pubsub), self.timeout)
                self._pubsub = pubsub  # no await since the last check: later subscribe() calls send their own
                self._connected.set()
                reconnector.connected(len(self._wanted))
                await self._receive(pubsub)
            except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
                reconnector.lost(exc)
            except Exception as exc:
                logger.exception("Redis subscriber failed")
                reconnector.lost(exc)
            finally:
                self._pubsub = None
                self._connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await reconnector.backoff()

    async def _receive(self, pubsub: Any) -> None:
        """Deliver messages; ping when idle, and give up on a Redis that stops answering (a hung one)."""
        idle = 0
        while True:
            message = await pubsub.get_message(timeout=self.timeout)
            if message is not None:
                idle = 0
                self._handle(message)
            elif idle:
                raise ConnectionError(f"no answer to PING within {self.timeout}s")
            else:
                idle = 1
                await pubsub.ping()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == b"message" or kind == "message":
            channel: bytes = message["channel"]
            try:
                frame = decode_payload(message["data"])
            except (ValueError, UnicodeDecodeError):
                logger.warning("Ignored a malformed payload on Redis channel %r", channel)
                return
            deliver_safely(self, logger, channel[len(self.prefix.encode()) :].decode(), frame)
        elif kind == b"subscribe" or kind == "subscribe":
            future = self._confirmed.get(message["channel"])
            if future is not None and not future.done():
                future.set_result(None)
