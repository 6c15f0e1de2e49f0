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

History (groups matching ``TETHER["GROUPS"]``) lives in a Redis Stream per
group, ``<prefix>stream:<group>``, with the group's newest offset in
``<prefix>top:<group>`` and its epoch in ``<prefix>epoch:<group>``. One Lua
script (atomic on the server) takes the next offset, ``XADD``s the message
(``MAXLEN`` = the history size), trims what is older than ``history_ttl``,
refreshes the keys' expiry to ``history_ttl`` and ``PUBLISH``es the message
with its position, so every process sees one order. When the keys are gone
(flushed, expired after ``history_ttl`` without a message, evicted) the
next script makes a new epoch.

Presence: a hash per group, ``<prefix>presence:<group>`` (connection ->
``<process>\\n<member JSON>``), a sorted set ``<prefix>presence-procs`` of the
processes by deadline (Redis time), and per process a set of the hashes it
has entries in (``<prefix>presence-groups:<process>``). Entries of a process
past its deadline don't count; one Lua script sweeps them (atomic, so each is
removed once). The scripts touch keys they compute, so presence needs a single
Redis, not a Cluster.

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
import uuid
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..exceptions import BackendUnavailable
from ..positions import Position, Retention, Window
from .base import Backend, Deliver, Frame, _Reconnector, decode_message, deliver_safely, encode_payload

__all__ = ["RedisBackend"]

logger = logging.getLogger("tether.backends.redis")

# KEYS: stream, top, epoch. ARGV: new epoch (used if the stream has none), ttl in ms (0: none).
# Makes the epoch if missing (dropping any leftover stream and offset: they belonged to a lost one),
# and returns the epoch, the server's time in ms and the cutoff (0: none).
_PROLOGUE = """
local epoch = redis.call('GET', KEYS[3])
local ttl = tonumber(ARGV[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3], epoch)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local cutoff = 0
if ttl > 0 then cutoff = now - ttl end
local function offset_of(id) return tonumber(string.match(id, '^(%d+)')) end
-- the id of the oldest entry younger than the cutoff, or nil
local function first_kept()
  local start = '-'
  while true do
    local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 64)
    if #chunk == 0 then return nil end
    for _, entry in ipairs(chunk) do
      if cutoff == 0 or tonumber(entry[2][2]) >= cutoff then return entry[1] end
    end
    start = '(' .. chunk[#chunk][1]
  end
end
"""

# ARGV: epoch, ttl_ms, channel, payload, size. Returns {offset, epoch}.
_APPEND = (
    _PROLOGUE
    + """
local top = redis.call('INCR', KEYS[2])
local id = string.format('%d-0', top)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], id, 't', now, 'd', ARGV[4])
if ttl > 0 then
  local keep = first_kept()
  if keep then redis.call('XTRIM', KEYS[1], 'MINID', keep) end
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
redis.call('PUBLISH', ARGV[3], 'p' .. string.format('%d', top) .. ' ' .. epoch .. '\\n' .. ARGV[4])
return {top, epoch}
"""
)

# ARGV: epoch, ttl_ms, after (-1: the newest), limit. Returns {epoch, top, first, id, data, id, data...}.
_READ = (
    _PROLOGUE
    + """
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
local keep = first_kept()
local first = top + 1
if keep then first = offset_of(keep) end
local after, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {epoch, top, first}
if limit > 0 and keep then
  local entries
  if after < 0 then
    entries = redis.call('XREVRANGE', KEYS[1], '+', keep, 'COUNT', limit)
    for i = #entries, 1, -1 do
      out[#out + 1] = entries[i][1]
      out[#out + 1] = entries[i][2][4]
    end
  else
    local start = math.max(after + 1, first)
    entries = redis.call('XRANGE', KEYS[1], string.format('%d-0', start), '+', 'COUNT', limit)
    for _, entry in ipairs(entries) do
      out[#out + 1] = entry[1]
      out[#out + 1] = entry[2][4]
    end
  end
end
return out
"""
)


# -- presence scripts ------------------------------------------------------------

_PRESENCE_PROLOGUE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function split(value)
  local nl = string.find(value, '\\n', 1, true)
  return string.sub(value, 1, nl - 1), string.sub(value, nl + 1)
end
local function user_of(member)
  local user = cjson.decode(member)['user']
  if user == cjson.null then return nil end
  return user
end
local function alive(procs, process)
  local deadline = redis.call('ZSCORE', procs, process)
  return deadline and tonumber(deadline) > now
end
-- whether a live entry of user other than connection is in the hash
local function others(hash, procs, connection, user)
  if user == nil then return false end
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    if all[i] ~= connection then
      local process, member = split(all[i + 1])
      if alive(procs, process) and user_of(member) == user then return true end
    end
  end
  return false
end
"""

# KEYS: hash, procs, groups-of-process. ARGV: connection, process, member, ttl_ms. Returns 1 if first of its user.
_PRESENCE_ADD = (
    _PRESENCE_PROLOGUE
    + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
if others(KEYS[1], KEYS[2], ARGV[1], user_of(ARGV[3])) then return 0 end
return 1
"""
)

# KEYS: hash, procs. ARGV: connection. Returns {member or '', 1 if it was the user's last}.
_PRESENCE_REMOVE = (
    _PRESENCE_PROLOGUE
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return {'', 0} end
redis.call('HDEL', KEYS[1], ARGV[1])
local process, member = split(value)
if others(KEYS[1], KEYS[2], ARGV[1], user_of(member)) then return {member, 0} end
return {member, 1}
"""
)

# KEYS: hash, procs. Returns the members of live entries.
_PRESENCE_LIST = (
    _PRESENCE_PROLOGUE
    + """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local process, member = split(all[i + 1])
  if alive(KEYS[2], process) then out[#out + 1] = member end
end
return out
"""
)

# KEYS: procs. ARGV: process, ttl_ms. Returns 1 if the process was known (and alive).
_PRESENCE_HEARTBEAT = (
    _PRESENCE_PROLOGUE
    + """
local known = alive(KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if known then return 1 end
return 0
"""
)

# KEYS: procs. ARGV: prefix of the groups-of-process sets. Returns {hash, member, last, ...} of what it removed.
_PRESENCE_SWEEP = (
    _PRESENCE_PROLOGUE
    + """
local removed = {}
for _, process in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], process)
  local owned = ARGV[1] .. process
  for _, hash in ipairs(redis.call('SMEMBERS', owned)) do
    local all = redis.call('HGETALL', hash)
    for i = 1, #all, 2 do
      local owner, member = split(all[i + 1])
      if owner == process then
        redis.call('HDEL', hash, all[i])
        removed[#removed + 1] = {hash, all[i], member}
      end
    end
  end
  redis.call('DEL', owned)
end
local out = {}
for _, entry in ipairs(removed) do
  local last = 1
  if others(entry[1], KEYS[1], entry[2], user_of(entry[3])) then last = 0 end
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[3]
  out[#out + 1] = last
end
return out
"""
)


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
        self._scripts: dict[str, Any] = {}  # Lua source -> registered Script (EVALSHA, loaded on first use)
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
        self._scripts.clear()
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

    # -- history -----------------------------------------------------------

    def _history_keys(self, group: str) -> list[str]:
        return [f"{self.prefix}{kind}:{group}" for kind in ("stream", "top", "epoch")]

    async def _script(self, script: str, keys: list[str], *args: Any) -> Any:
        if self._client is None:
            await self.start()
        assert self._client is not None
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._client.register_script(script)
        try:
            return await registered(keys, list(args))
        except (RedisError, OSError) as exc:
            self.failed += 1
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    async def append(self, group: str, frame: Frame, retention: Retention) -> Position:
        """One script: the next offset, ``XADD`` with ``MAXLEN``, age trim, expiry and ``PUBLISH``."""
        listening = self._reconnector.task is not None
        if listening and not self._connected.is_set():
            await self._reconnector.retry_now(self.timeout)  # as publish() does
        offset, epoch = await self._script(
            _APPEND,
            self._history_keys(group),
            uuid.uuid4().hex[:12],
            _ms(retention.ttl),
            self._channel(group),
            encode_payload(frame),
            retention.size,
        )
        if listening and not self._connected.is_set():
            self.missed += 1
        return Position(int(offset), epoch.decode())

    async def read(self, group: str, after: int | None, limit: int, retention: Retention) -> Window:
        reply = await self._script(
            _READ,
            self._history_keys(group),
            uuid.uuid4().hex[:12],
            _ms(retention.ttl),
            -1 if after is None else after,
            max(0, limit),
        )
        epoch, top, first, rest = reply[0].decode(), int(reply[1]), int(reply[2]), reply[3:]
        entries = []
        for i in range(0, len(rest), 2):
            entries.append((int(rest[i].split(b"-", 1)[0]), decode_message(rest[i + 1])[0]))
        return Window(epoch, top, first, entries)

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
                if reconnector.connected(len(self._wanted)):
                    self.reconnected()  # the hub backfills its history groups
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
                frame, position = decode_message(message["data"])
            except (ValueError, UnicodeDecodeError):
                logger.warning("Ignored a malformed payload on Redis channel %r", channel)
                return
            deliver_safely(self, logger, channel[len(self.prefix.encode()) :].decode(), frame, position)
        elif kind == b"subscribe" or kind == "subscribe":
            future = self._confirmed.get(message["channel"])
            if future is not None and not future.done():
                future.set_result(None)

    # -- presence ------------------------------------------------------------

    def _presence_keys(self, group: str) -> list[str]:
        return [f"{self.prefix}presence:{group}", f"{self.prefix}presence-procs"]

    async def presence_add(
        self, group: str, connection: str, user: str | None, member: str, process: str, ttl: float
    ) -> bool:
        """One script: extend the process's deadline, store the entry, look for the user's other ones."""
        keys = [*self._presence_keys(group), f"{self.prefix}presence-groups:{process}"]
        first = await self._script(_PRESENCE_ADD, keys, connection, process, member, _ms(ttl))
        return bool(first)

    async def presence_remove(self, group: str, connection: str) -> tuple[str | None, bool]:
        member, last = await self._script(_PRESENCE_REMOVE, self._presence_keys(group), connection)
        return (member.decode() or None), bool(last)

    async def presence_list(self, group: str) -> list[str]:
        members = await self._script(_PRESENCE_LIST, self._presence_keys(group))
        return [member.decode() for member in members]

    async def presence_heartbeat(self, process: str, ttl: float) -> bool:
        known = await self._script(_PRESENCE_HEARTBEAT, [f"{self.prefix}presence-procs"], process, _ms(ttl))
        return bool(known)

    async def presence_sweep(self) -> list[tuple[str, str, bool]]:
        reply = await self._script(_PRESENCE_SWEEP, [f"{self.prefix}presence-procs"], f"{self.prefix}presence-groups:")
        head = len(f"{self.prefix}presence:")
        return [(reply[i].decode()[head:], reply[i + 1].decode(), bool(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def presence_forget(self, process: str) -> None:
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            await self._client.zrem(f"{self.prefix}presence-procs", process)
            await self._client.delete(f"{self.prefix}presence-groups:{process}")
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc


def _ms(ttl: float | None) -> int:
    """``history_ttl`` in milliseconds for the scripts (0: no age limit)."""
    return 0 if ttl is None else max(1, round(ttl * 1000))
