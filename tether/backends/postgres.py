"""PostgreSQL LISTEN/NOTIFY backend (``pip install django-tether[postgres]``, psycopg 3).

Each process holds one dedicated listening connection, built from the Django
``DATABASES`` alias in ``OPTIONS["database"]`` (application name
``tether-listen-<pid>``), and one connection for publishing. Like Redis
pub/sub, NOTIFY is at-most-once: a process whose listener is down misses what
is published meanwhile. The listener reconnects with backoff (0.02 s doubling
to 0.1 s, and at once when this process publishes) after a restart or
``pg_terminate_backend`` and LISTENs again; a publish while it is down first
gives it one try, so once the database answers again what this process
publishes reaches its own sockets too. An idle listener checks its connection
every ``timeout`` seconds, so a hung database is noticed too.

Channel names: PostgreSQL identifiers are at most 63 bytes, and group names
go up to 100 characters, so a group's channel is ``tether_`` followed by the
first 40 hex digits of its SHA-256 (47 bytes, always a valid identifier; a
collision would need 2^80 groups). ``SELECT pg_notify(channel, ...)`` and
``LISTEN`` work with these names; you never have to type them.

Payloads: a NOTIFY payload must be under 8000 bytes and may not contain NUL.
Text frames go as ``t<text>``, binary ones as ``b<base64>``; anything larger
(or text with NUL) is stored in the ``tether_payload`` table (run
``migrate``) and the notification carries ``r<id>``, which the listener
fetches on a third connection, so publishing never waits behind a fetch. Rows
older than ``OPTIONS["payload_ttl"]`` seconds (default 300) are pruned.

Options: ``database`` (default ``"default"``), ``timeout`` in seconds for every
call to the database (connect, publish, fetch, LISTEN; default 5: long enough
for a busy server, short enough that a hung one surfaces as
``BackendUnavailable``), ``subscribe_timeout`` (5 s), ``payload_ttl`` (300 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
import uuid
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from psycopg import sql

from ..exceptions import BackendUnavailable
from .base import Backend, Deliver, Frame, _Reconnector, decode_payload, deliver_safely, encode_payload

__all__ = ["NOTIFY_LIMIT", "PostgresBackend", "channel_for"]

logger = logging.getLogger("tether.backends.postgres")

NOTIFY_LIMIT = 7999  # bytes: PostgreSQL refuses a NOTIFY payload of 8000 or more
_PRUNE_EVERY = 60.0  # seconds between prunes of old stored payloads


def channel_for(group: str) -> str:
    """The NOTIFY channel for ``group``: a 47-byte identifier whatever the group's length."""
    return "tether_" + hashlib.sha256(group.encode()).hexdigest()[:40]


def connection_params(alias: str) -> dict[str, Any]:
    """psycopg connection keywords for the ``DATABASES[alias]`` PostgreSQL database."""
    if alias not in connections.settings:
        raise ImproperlyConfigured(f"TETHER['OPTIONS']['database'] = {alias!r} is not in settings.DATABASES")
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(f"the PostgreSQL backend needs a PostgreSQL database; {alias!r} is {wrapper.vendor}")
    params: dict[str, Any] = wrapper.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold", "pool"):
        params.pop(key, None)
    return params


class PostgresBackend(Backend):
    """LISTEN/NOTIFY over one dedicated listening connection per process."""

    def __init__(
        self,
        deliver: Deliver | None = None,
        *,
        database: str = "default",
        timeout: float = 5.0,
        subscribe_timeout: float = 5.0,
        payload_ttl: float = 300.0,
    ) -> None:
        super().__init__(deliver)
        self.database = database
        self.timeout = timeout
        self.subscribe_timeout = subscribe_timeout
        self.payload_ttl = payload_ttl
        self.missed = 0  # published by this process while its listener was down
        self.failed = 0
        self._reconnector = _Reconnector(f"PostgreSQL listener on database {database!r}", lambda: self.missed, logger)
        self._params: dict[str, Any] | None = None
        # "publish" (and (UN)LISTEN wake-ups) and "fetch" (stored payloads): one lock each
        self._conns: dict[str, psycopg.AsyncConnection[Any] | None] = {"publish": None, "fetch": None}
        self._locks = {"publish": asyncio.Lock(), "fetch": asyncio.Lock()}
        self._control = f"tether_ctl_{uuid.uuid4().hex[:16]}"  # wakes the listener to (UN)LISTEN
        self._groups: dict[str, str] = {}  # channel -> group, for the wanted channels
        self._listening: set[str] = set()
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._dirty = False
        self._connected = asyncio.Event()
        self._last_prune = 0.0

    async def start(self) -> None:
        if self._params is None:
            self._params = connection_params(self.database)

    async def stop(self) -> None:
        await self._reconnector.cancel()
        for role, conn in list(self._conns.items()):
            self._conns[role] = None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
        self._groups.clear()

    # -- publishing ---------------------------------------------------------

    async def _connect(self, role: str) -> psycopg.AsyncConnection[Any]:
        assert self._params is not None
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                **self._params, autocommit=True, application_name=f"tether-{role}-{os.getpid()}"
            ),
            self.timeout,
        )

    async def _execute(self, query: str, params: tuple[Any, ...], role: str = "publish") -> list[tuple[Any, ...]]:
        """Run ``query`` on the ``role`` connection within ``timeout`` seconds, reconnecting once if it broke.

        A query the database does not answer in time is abandoned with its connection
        and lock (psycopg's own cancellation would wait on the hung server too).
        """
        await self.start()
        for attempt in (1, 2):
            task = asyncio.ensure_future(self._execute_once(query, params, role))
            try:
                done, _ = await asyncio.wait([task], timeout=self.timeout)
            except asyncio.CancelledError:
                task.cancel()  # the caller was cancelled: so is its query, which closes its connection
                await asyncio.wait([task])
                raise
            if not done:
                self._abandon(role, task)
                self.failed += 1
                raise BackendUnavailable(f"PostgreSQL ({self.database!r}) did not answer within {self.timeout}s")
            try:
                return task.result()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    self.failed += 1
                    raise BackendUnavailable(f"PostgreSQL ({self.database!r}) is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    def _abandon(self, role: str, task: asyncio.Future[list[tuple[Any, ...]]]) -> None:
        self._conns[role] = None
        self._locks[role] = asyncio.Lock()  # later calls don't queue behind the hung one
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _execute_once(self, query: str, params: tuple[Any, ...], role: str) -> list[tuple[Any, ...]]:
        async with self._locks[role]:
            conn = self._conns[role]
            try:
                if conn is None or conn.closed:
                    conn = self._conns[role] = await self._connect(role)
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
            except BaseException:  # broken, or interrupted mid-query: never reuse it
                if self._conns[role] is conn:
                    self._conns[role] = None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await asyncio.shield(conn.close())
                raise

    @property
    def reconnects(self) -> int:
        """How many times the listener reconnected after losing its connection."""
        return self._reconnector.count

    async def publish(self, group: str, frame: Frame) -> None:
        channel = channel_for(group)
        if isinstance(frame, str) and "\x00" not in frame:
            payload = "t" + frame
        elif isinstance(frame, bytes):
            payload = "b" + base64.b64encode(frame).decode()
        else:
            payload = ""  # text with NUL: only the table can carry it
        if not payload or (len(payload) * 4 > NOTIFY_LIMIT and len(payload.encode()) > NOTIFY_LIMIT):
            rows = await self._execute(
                "INSERT INTO tether_payload (channel, data) VALUES (%s, %s) RETURNING id",
                (channel, encode_payload(frame)),
            )
            payload = f"r{rows[0][0]}"
            await self._prune()
        listening = self._reconnector.task is not None
        if listening and not self._connected.is_set():
            await self._reconnector.retry_now(self.timeout)
        await self._execute("SELECT pg_notify(%s, %s)", (channel, payload))
        if listening and not self._connected.is_set():
            self.missed += 1

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        await self._execute(
            "DELETE FROM tether_payload WHERE created < now() - make_interval(secs => %s)", (self.payload_ttl,)
        )

    # -- subscribing --------------------------------------------------------

    async def subscribe(self, group: str) -> None:
        channel = channel_for(group)
        self._groups[channel] = group
        self._reconnector.ensure_running(self._listen_forever, "tether-pg-listener")
        future = self._confirmed.get(channel)
        if future is None or future.cancelled():
            future = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        if not future.done():
            await self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.subscribe_timeout)
        except (asyncio.TimeoutError, TimeoutError):  # two classes on Python 3.10
            raise BackendUnavailable(
                f"PostgreSQL ({self.database!r}) did not LISTEN for {group!r} within {self.subscribe_timeout}s; "
                "it will when the database is back"
            ) from None

    async def unsubscribe(self, group: str) -> None:
        channel = channel_for(group)
        self._groups.pop(channel, None)
        future = self._confirmed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()
        await self._wake()

    async def _wake(self) -> None:
        """Interrupt the listener's wait so it applies (UN)LISTEN changes now."""
        self._dirty = True
        if self._connected.is_set():
            with contextlib.suppress(BackendUnavailable):  # the listener catches up when it reconnects
                await self._execute("SELECT pg_notify(%s, '')", (self._control,))

    async def _apply(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._dirty = False
        wanted = set(self._groups)
        for channel in wanted - self._listening:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._listening.add(channel)
        for channel in self._listening - wanted:
            await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
            self._listening.discard(channel)
        for channel in wanted:
            future = self._confirmed.get(channel)
            if future is not None and not future.done():
                future.set_result(None)

    async def _listen_forever(self) -> None:
        """Hold the listening connection: (re)connect, LISTEN, deliver; back off on failure.

        Any exception is a lost connection (logged with its traceback if it is not a
        driver error); only cancellation ends it.
        """
        await self.start()
        reconnector = self._reconnector
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect("listen")
                self._listening = set()
                await asyncio.wait_for(self._listen_to_wanted(conn), self.timeout)
                self._connected.set()
                reconnector.connected(len(self._listening))
                await self._receive(conn)
            except (psycopg.Error, asyncio.TimeoutError, TimeoutError) as exc:
                reconnector.lost(exc)
            except Exception as exc:
                logger.exception("PostgreSQL listener failed")
                reconnector.lost(exc)
            finally:
                self._connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await reconnector.backoff()

    async def _listen_to_wanted(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._control)))
        await self._apply(conn)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deliver notifications; (UN)LISTEN between batches; check the connection when idle."""
        while True:
            if self._dirty:
                await asyncio.wait_for(self._apply(conn), self.timeout)
            received = 0
            # stop_after ends the generator only after the whole batch psycopg read (breaking out loses the rest)
            async for notify in conn.notifies(timeout=self.timeout, stop_after=1):
                received += 1
                if notify.channel != self._control:
                    await self._handle(notify.channel, notify.payload)
            if not received:  # idle for `timeout` seconds: is the database still there?
                await asyncio.wait_for(conn.execute("SELECT 1"), self.timeout)

    async def _handle(self, channel: str, payload: str) -> None:
        group = self._groups.get(channel)
        if group is None:
            return  # UNLISTEN under way
        kind, data = payload[:1], payload[1:]
        try:
            if kind == "t":
                frame: Frame = data
            elif kind == "b":
                frame = base64.b64decode(data)
            elif kind == "r":
                rows = await self._execute("SELECT data FROM tether_payload WHERE id = %s", (int(data),), "fetch")
                if not rows:
                    logger.warning("Stored payload %s for group %s is gone (pruned?); skipped", data, group)
                    return
                frame = decode_payload(bytes(rows[0][0]))
            else:
                raise ValueError(f"unknown payload kind {kind!r}")
        except (ValueError, BackendUnavailable) as exc:
            logger.warning("Dropped a notification for group %s: %s", group, exc)
            return
        deliver_safely(self, logger, group, frame)
