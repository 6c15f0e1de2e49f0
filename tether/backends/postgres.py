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

History (groups matching ``TETHER["GROUPS"]``): one statement appends a
message: it bumps the group's row in ``tether_stream`` (``UPDATE ...
RETURNING``, so the row stays locked until the transaction ends and offsets
are gap-free and in commit order), inserts the message into
``tether_history``, prunes by length, and NOTIFYs the message with its
position (``p<offset> <epoch>\\n`` before the payload; a payload too large
for NOTIFY is read back from ``tether_history``). Rows older than
``history_ttl`` are ignored by reads and deleted at most once a minute per
group. ``broadcast_on_commit`` runs the same statement in the caller's own
transaction (``publish_in_transaction``): a transactional outbox, published
once if and only if the transaction commits.

Presence: ``tether_presence`` holds one row per group and connection (its
member JSON, user and owning process), ``tether_presence_process`` each
process's deadline (database time); a row of a process past its deadline
doesn't count, and one statement sweeps them (``DELETE ... RETURNING``, so
each is removed once).

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
from django.db import connections, transaction
from psycopg import sql

from ..exceptions import BackendUnavailable
from ..positions import Position, Retention, Window
from .base import Backend, Deliver, Frame, _Reconnector, decode_payload, deliver_safely, encode_payload

__all__ = ["NOTIFY_LIMIT", "PostgresBackend", "channel_for"]

logger = logging.getLogger("tether.backends.postgres")

NOTIFY_LIMIT = 7999  # bytes: PostgreSQL refuses a NOTIFY payload of 8000 or more
_PRUNE_EVERY = 60.0  # seconds between prunes of old stored payloads


_APPEND = """
WITH s AS (
    INSERT INTO tether_stream (group_name, epoch, top) VALUES (%(group)s, %(epoch)s, 1)
    ON CONFLICT (group_name) DO UPDATE SET top = tether_stream.top + 1
    RETURNING epoch, top
), i AS (
    INSERT INTO tether_history (group_name, seq, epoch, data, created)
    SELECT %(group)s, top, epoch, %(data)s, now() FROM s
    ON CONFLICT (group_name, seq) DO UPDATE SET epoch = EXCLUDED.epoch, data = EXCLUDED.data, created = EXCLUDED.created
), d AS (
    DELETE FROM tether_history WHERE group_name = %(group)s AND seq <= (SELECT top FROM s) - %(size)s
)
SELECT top, epoch, pg_notify(%(channel)s, 'p' || top || ' ' || epoch || E'\\n' || %(inner)s) FROM s
"""

_READ = """
WITH s AS (SELECT epoch, top FROM tether_stream WHERE group_name = %(group)s),
k AS (
    SELECT h.seq, h.data FROM tether_history h, s
    WHERE h.group_name = %(group)s AND h.epoch = s.epoch AND h.seq <= s.top AND h.seq > s.top - %(size)s
    AND (%(ttl)s::float8 IS NULL OR h.created >= now() - make_interval(secs => %(ttl)s::float8))
)
SELECT s.epoch, s.top, (SELECT min(seq) FROM k), e.seq, e.data
FROM s LEFT JOIN LATERAL (SELECT seq, data FROM k WHERE {where} ORDER BY seq {order} LIMIT %(limit)s) e ON true
"""


_LIVE_OTHERS = """
    SELECT 1 FROM tether_presence o JOIN tether_presence_process q USING (process)
    WHERE o.group_name = {group} AND o.user_id = {user} AND o.connection <> {connection} AND q.deadline > now()
"""

_PRESENCE_ADD = (
    """
WITH p AS (
    INSERT INTO tether_presence_process (process, deadline)
    VALUES (%(process)s, now() + make_interval(secs => %(ttl)s::float8))
    ON CONFLICT (process) DO UPDATE SET deadline = EXCLUDED.deadline
), e AS (
    INSERT INTO tether_presence (group_name, connection, process, user_id, member)
    VALUES (%(group)s, %(connection)s, %(process)s, %(user)s, %(member)s)
    ON CONFLICT (group_name, connection) DO UPDATE
    SET process = EXCLUDED.process, user_id = EXCLUDED.user_id, member = EXCLUDED.member
)
SELECT NOT EXISTS ("""
    + _LIVE_OTHERS.format(group="%(group)s", user="%(user)s", connection="%(connection)s")
    + ")"
)

_PRESENCE_REMOVE = (
    """
WITH d AS (
    DELETE FROM tether_presence WHERE group_name = %(group)s AND connection = %(connection)s RETURNING user_id, member
)
SELECT d.member, NOT EXISTS ("""
    + _LIVE_OTHERS.format(group="%(group)s", user="d.user_id", connection="%(connection)s")
    + ") FROM d"
)

_PRESENCE_SWEEP = (
    """
WITH dead AS (
    DELETE FROM tether_presence_process WHERE deadline <= now() RETURNING process
), gone AS (
    DELETE FROM tether_presence WHERE process IN (SELECT process FROM dead)
    RETURNING group_name, connection, user_id, member
)
SELECT g.group_name, g.member, NOT EXISTS ("""
    + _LIVE_OTHERS.format(group="g.group_name", user="g.user_id", connection="g.connection")
    + ") FROM gone g"
)

_PRESENCE_HEARTBEAT = """
WITH old AS (SELECT deadline > now() AS alive FROM tether_presence_process WHERE process = %(process)s),
u AS (
    INSERT INTO tether_presence_process (process, deadline)
    VALUES (%(process)s, now() + make_interval(secs => %(ttl)s::float8))
    ON CONFLICT (process) DO UPDATE SET deadline = EXCLUDED.deadline
)
SELECT coalesce((SELECT alive FROM old), false)
"""


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
        self._history_pruned: dict[str, float] = {}  # group -> when its old history rows were last deleted

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
        payload = _inline(frame, NOTIFY_LIMIT)
        if not payload:
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

    # -- history -----------------------------------------------------------

    def _append_params(self, group: str, frame: Frame, retention: Retention) -> dict[str, Any]:
        return {
            "group": group,
            "epoch": uuid.uuid4().hex[:12],
            "data": encode_payload(frame),
            "size": retention.size,
            "channel": channel_for(group),
            # the position header takes at most 40 bytes; "h": too large, read it from tether_history
            "inner": _inline(frame, NOTIFY_LIMIT - 40) or "h",
        }

    async def append(self, group: str, frame: Frame, retention: Retention) -> Position:
        """One statement: bump the group's offset, store, prune by length, NOTIFY with the position."""
        rows = await self._execute_named(_APPEND, self._append_params(group, frame, retention))
        if self._reconnector.task is not None and not self._connected.is_set():
            self.missed += 1
        await self._prune_history(group, retention)
        return Position(int(rows[0][0]), rows[0][1])

    def publish_in_transaction(self, group: str, frame: Frame, retention: Retention | None, using: str | None) -> bool:
        """Publish in the caller's transaction on ``using`` when it is this backend's database:
        NOTIFY (and the history row) become part of it, so a rollback sends nothing and a commit
        sends once, even if the process dies right after."""
        alias = using or "default"
        if alias not in connections.settings or not _same_database(alias, self.database):
            return False
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            if retention is not None:
                cursor.execute(_APPEND, self._append_params(group, frame, retention))
            else:
                payload = _inline(frame, NOTIFY_LIMIT)
                if not payload:
                    cursor.execute(
                        "INSERT INTO tether_payload (channel, data) VALUES (%s, %s) RETURNING id",
                        [channel_for(group), encode_payload(frame)],
                    )
                    payload = f"r{cursor.fetchone()[0]}"
                cursor.execute("SELECT pg_notify(%s, %s)", [channel_for(group), payload])
        return True

    async def read(self, group: str, after: int | None, limit: int, retention: Retention) -> Window:
        query = _READ.format(
            where="true" if after is None else "seq > %(after)s", order="DESC" if after is None else "ASC"
        )
        params = {"group": group, "size": retention.size, "ttl": retention.ttl, "after": after, "limit": max(0, limit)}
        rows = await self._execute_named(query, params)
        if not rows:  # no stream yet: make its epoch now, so a position given before the first message holds
            await self._execute(
                "INSERT INTO tether_stream (group_name, epoch, top) VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                (group, uuid.uuid4().hex[:12]),
            )
            rows = await self._execute_named(query, params)
        epoch, top, first = rows[0][0], int(rows[0][1]), rows[0][2]
        entries = [(int(seq), decode_payload(bytes(data))) for _, _, _, seq, data in rows if seq is not None]
        entries.sort(key=lambda entry: entry[0])
        return Window(epoch, top, top + 1 if first is None else int(first), entries)

    async def _execute_named(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await self._execute(query, params)  # type: ignore[arg-type]

    async def _prune_history(self, group: str, retention: Retention) -> None:
        """Delete ``group``'s rows older than its ``history_ttl``, at most once a minute (reads skip them anyway)."""
        if retention.ttl is None:
            return
        now = time.monotonic()
        if now - self._history_pruned.get(group, 0.0) < min(_PRUNE_EVERY, retention.ttl):
            return
        self._history_pruned[group] = now
        if len(self._history_pruned) > 10_000:
            self._history_pruned.clear()
        await self._execute(
            "DELETE FROM tether_history WHERE group_name = %s AND created < now() - make_interval(secs => %s)",
            (group, retention.ttl),
        )

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
                if reconnector.connected(len(self._listening)):
                    self.reconnected()  # the hub backfills its history groups
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
        position: Position | None = None
        try:
            if kind == "p":  # a history message: "p<offset> <epoch>\n" then the payload
                head, _, data = data.partition("\n")
                offset, _, epoch = head.partition(" ")
                position = Position(int(offset), epoch)
                kind, data = data[:1], data[1:]
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
            elif kind == "h" and position is not None:
                rows = await self._execute(
                    "SELECT data FROM tether_history WHERE group_name = %s AND seq = %s AND epoch = %s",
                    (group, position.offset, position.epoch),
                    "fetch",
                )
                if not rows:
                    logger.warning(
                        "Message %s of group %s is gone from its history (pruned?); skipped", position, group
                    )
                    return
                frame = decode_payload(bytes(rows[0][0]))
            else:
                raise ValueError(f"unknown payload kind {kind!r}")
        except (ValueError, BackendUnavailable) as exc:
            logger.warning("Dropped a notification for group %s: %s", group, exc)
            return
        deliver_safely(self, logger, group, frame, position)

    # -- presence ------------------------------------------------------------

    async def presence_add(
        self, group: str, connection: str, user: str | None, member: str, process: str, ttl: float
    ) -> bool:
        """One statement: extend the process's deadline, upsert the entry, look for the user's other ones."""
        params = {"group": group, "connection": connection, "user": user, "member": member, "process": process}
        rows = await self._execute_named(_PRESENCE_ADD, {**params, "ttl": ttl})
        return bool(rows[0][0])

    async def presence_remove(self, group: str, connection: str) -> tuple[str | None, bool]:
        rows = await self._execute_named(_PRESENCE_REMOVE, {"group": group, "connection": connection})
        if not rows:
            return None, False
        return str(rows[0][0]), bool(rows[0][1])

    async def presence_list(self, group: str) -> list[str]:
        rows = await self._execute(
            "SELECT e.member FROM tether_presence e JOIN tether_presence_process q USING (process) "
            "WHERE e.group_name = %s AND q.deadline > now()",
            (group,),
        )
        return [str(row[0]) for row in rows]

    async def presence_heartbeat(self, process: str, ttl: float) -> bool:
        rows = await self._execute_named(_PRESENCE_HEARTBEAT, {"process": process, "ttl": ttl})
        return bool(rows[0][0])

    async def presence_sweep(self) -> list[tuple[str, str, bool]]:
        rows = await self._execute(_PRESENCE_SWEEP, ())
        return [(str(group), str(member), bool(last)) for group, member, last in rows]

    async def presence_forget(self, process: str) -> None:
        await self._execute("DELETE FROM tether_presence_process WHERE process = %s", (process,))


def _inline(frame: Frame, limit: int) -> str:
    """``frame`` as a NOTIFY payload (``t<text>`` or ``b<base64>``), or "" when it needs the table
    (over ``limit`` bytes, or text with NUL, which NOTIFY can't carry)."""
    if isinstance(frame, str) and "\x00" not in frame:
        payload = "t" + frame
    elif isinstance(frame, bytes):
        payload = "b" + base64.b64encode(frame).decode()
    else:
        return ""
    if len(payload) * 4 > limit and len(payload.encode()) > limit:
        return ""
    return payload


def _same_database(alias: str, other: str) -> bool:
    """Whether two ``DATABASES`` aliases name the same PostgreSQL database."""
    if connections[alias].vendor != "postgresql" or other not in connections.settings:
        return False
    if alias == other:
        return True
    keys = ("NAME", "HOST", "PORT")
    mine, theirs = connections[alias].settings_dict, connections[other].settings_dict
    return all(mine.get(key) == theirs.get(key) for key in keys)
