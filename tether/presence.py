"""Presence: who is in a group, across processes, with join and leave events.

Opt in per group pattern: ``TETHER["GROUPS"] = {"room.*": {"presence": True}}``.
Every socket that joins such a group (a ``SocketView`` calling ``join()``, a
``RealtimeView`` subscription) gets an entry: its user's primary key (a string,
None when anonymous), a connection id and the ``info`` its view's
``presence_info()`` returns. ``await presence(group)`` lists the entries of
every process; protocol subscribers of the group get ``join``/``leave`` pushes.

Each process keeps its entries alive with a heartbeat every
``PRESENCE_TTL / 3`` seconds (default TTL 30 s), and sweeps the entries of
processes that stopped beating. A socket that closes leaves at once; the
members of a crashed process leave within ``4/3 x PRESENCE_TTL`` of the crash
(the sweep that notices publishes their ``leave`` events). Events travel on a
backend channel of tether's own per group (``internal_group``), so plain
sockets of the group never see them.

The signals ``tether.signals.user_connected``/``user_disconnected`` use the
same entries, in a channel per user: a user's first socket across the
deployment, and their last one.

Delivery of events is like live messages: at most once. A client that must
be exact reloads the list with ``presence()`` after a reconnect and applies
events by connection id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation

from ._types import Frame
from .backends.base import load_backend
from .conf import get_setting
from .exceptions import BackendUnavailable
from .groups import internal_group, is_internal, user_group, validate_group
from .hub import Hub, current_hub, get_hub
from .positions import presence_enabled
from .signals import user_connected, user_disconnected
from .websocket import ConnectionState, WebSocket, encode_json

__all__ = [
    "Listener",
    "PresenceMember",
    "Tracker",
    "discard",
    "listen",
    "presence",
    "presence_json",
    "presence_sync",
    "presence_ttl",
    "track",
    "track_user",
    "tracking_users",
    "unlisten",
    "untrack",
]

logger = logging.getLogger("tether.presence")

Listener = Callable[[str, str], None]
"""A listener of a group's presence events: called with ``(group, push)``, the ``join``/``leave`` push as JSON text."""

_SYNC_TIMEOUT = 30.0


@dataclass(frozen=True)
class PresenceMember:
    """One connection in a group with presence: its user's primary key (None: anonymous), id and info."""

    user: str | None
    connection: str
    info: Any = None

    def as_dict(self) -> dict[str, Any]:
        """``{"user", "connection", "info"}``, as the protocol sends it."""
        return {"user": self.user, "connection": self.connection, "info": self.info}


def presence_ttl() -> float:
    """``TETHER["PRESENCE_TTL"]`` in seconds; raises ``ImproperlyConfigured`` unless it is a number > 0."""
    ttl = get_setting("PRESENCE_TTL")
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0 or ttl == float("inf"):
        raise ImproperlyConfigured(f"TETHER['PRESENCE_TTL'] must be seconds > 0, got {ttl!r}")
    return float(ttl)


def _channel(group: str) -> str:
    return internal_group("presence", group)


def _user_channel(user_id: str) -> str:
    return internal_group("user", user_group(user_id))


def _push(kind: str, group: str, member: str) -> str:
    return '{"type":"' + kind + '","group":' + json.dumps(group, ensure_ascii=False) + ',"member":' + member + "}"


class Tracker:
    """This process's presence (one per hub): its entries, its heartbeat and sweep, its listeners."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.backend = hub.backend
        self.process = uuid.uuid4().hex
        self.ttl = presence_ttl()
        self.connections: dict[WebSocket, str] = {}
        self.entries: dict[WebSocket, dict[str, tuple[str | None, str]]] = {}  # socket -> group -> (user, member)
        self.users: dict[WebSocket, Any] = {}  # sockets tracked for the user signals -> their user
        self.listeners: dict[str, list[Listener]] = {}
        self.dirty = False  # an entry could not be stored: the next heartbeat stores them all again
        self.beats = 0
        self.closed = False
        self._locks: dict[WebSocket, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signals: asyncio.Queue[tuple[bool, str, Any, WebSocket | None]] = asyncio.Queue()
        self._beat = hub.loop.create_task(self._heartbeat(), name="tether-presence-heartbeat")
        self._sender = hub.loop.create_task(self._send_signals(), name="tether-presence-signals")

    def connection(self, socket: WebSocket) -> str:
        """``socket``'s connection id (made on first use)."""
        ident = self.connections.get(socket)
        if ident is None:
            ident = self.connections[socket] = uuid.uuid4().hex[:16]
        return ident

    def _lock(self, socket: WebSocket) -> asyncio.Lock:
        lock = self._locks.get(socket)
        if lock is None:
            lock = self._locks[socket] = asyncio.Lock()
        return lock

    # -- entries -------------------------------------------------------------

    async def add(self, socket: WebSocket, group: str, user: str | None, info: Any) -> bool:
        """Store ``socket``'s entry in ``group`` (a channel of tether's own for the user signals).

        Returns whether it is its user's first live entry there; publishes ``join`` for a group.
        """
        member = encode_json({"user": user, "connection": self.connection(socket), "info": info})
        async with self._lock(socket):
            if self.closed or socket.connection_state is ConnectionState.CLOSED:
                return False
            self.entries.setdefault(socket, {})[group] = (user, member)
            try:
                first = await self.backend.presence_add(
                    group, self.connection(socket), user, member, self.process, self.ttl
                )
            except BackendUnavailable as exc:
                self.dirty = True
                logger.warning("Presence entry in %s not stored (%s); the heartbeat retries", group, exc)
                return False
            if not is_internal(group):
                await self._publish("join", group, member)
            return first

    async def remove(self, socket: WebSocket, group: str) -> tuple[str | None, bool]:
        """Remove ``socket``'s entry from ``group``; publishes ``leave``. Returns what ``presence_remove`` does."""
        async with self._lock(socket):
            return await self._remove(socket, group)

    async def _remove(self, socket: WebSocket, group: str) -> tuple[str | None, bool]:
        entries = self.entries.get(socket)
        if entries is None or entries.pop(group, None) is None:
            return None, False
        try:
            member, last = await self.backend.presence_remove(group, self.connection(socket))
        except BackendUnavailable as exc:
            logger.warning("Presence entry in %s not removed (%s); it expires with this process", group, exc)
            return None, False
        if member is not None and not is_internal(group):
            await self._publish("leave", group, member)
        return member, last

    async def drop(self, socket: WebSocket) -> None:
        """Remove every entry of ``socket`` (it closed), and send ``user_disconnected`` if it was the last."""
        async with self._lock(socket):
            for group in list(self.entries.get(socket, ())):
                member, last = await self._remove(socket, group)
                user = self.users.get(socket)
                if user is not None and member is not None and last and group == _user_channel(str(user.pk)):
                    self._signals.put_nowait((False, str(user.pk), user, socket))
            self.entries.pop(socket, None)
            self.users.pop(socket, None)
            self.connections.pop(socket, None)
        self._locks.pop(socket, None)

    def discard(self, socket: WebSocket) -> None:
        """``drop(socket)`` in the background (synchronous, for a ``finally``)."""
        if socket in self.entries or socket in self.users:
            self._spawn(self.drop(socket))

    def _spawn(self, coro: Any) -> None:
        task = self.hub.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, kind: str, group: str, member: str) -> None:
        try:
            await self.backend.publish(_channel(group), _push(kind, group, member))
        except BackendUnavailable as exc:
            logger.warning("Presence %s event for %s not sent: %s", kind, group, exc)

    # -- the user signals --------------------------------------------------------

    async def add_user(self, socket: WebSocket, user: Any) -> None:
        """Track ``socket`` in its user's channel; queue ``user_connected`` if it is the user's first."""
        self.users[socket] = user
        user_id = str(user.pk)
        if await self.add(socket, _user_channel(user_id), user_id, None):
            self._signals.put_nowait((True, user_id, user, socket))

    async def _send_signals(self) -> None:
        """Send the user signals one at a time, in the order they happened."""
        while True:
            connected, user_id, user, socket = await self._signals.get()
            signal = user_connected if connected else user_disconnected
            try:
                await signal.asend(sender=Tracker, user_id=user_id, user=user, socket=socket)
            except Exception:
                logger.exception("A receiver of %s raised", "user_connected" if connected else "user_disconnected")
            finally:
                self._signals.task_done()

    # -- events ------------------------------------------------------------------

    async def listen(self, group: str, listener: Listener) -> None:
        """Call ``listener(group, push)`` for each ``join``/``leave`` of ``group``, from any process."""
        listeners = self.listeners.setdefault(group, [])
        if listener not in listeners:
            listeners.append(listener)
        await self.hub.watch(_channel(group), self._event)

    async def unlisten(self, group: str, listener: Listener) -> None:
        """Stop calling ``listener`` for ``group``. Idempotent."""
        listeners = self.listeners.get(group)
        if listeners is None or listener not in listeners:
            return
        listeners.remove(listener)
        if not listeners:
            del self.listeners[group]
            await self.hub.unwatch(_channel(group), self._event)

    def _event(self, channel: str, frame: Frame) -> None:
        group = channel[len(_channel("")) :]
        if not isinstance(frame, str):
            return
        for listener in list(self.listeners.get(group, ())):
            try:
                listener(group, frame)
            except Exception:
                logger.exception("A presence listener of %s failed", group)

    # -- heartbeat and sweep -----------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.beat()
            except BackendUnavailable as exc:
                logger.warning("Presence heartbeat failed (%s); retrying in %.1fs", exc, self.ttl / 3)
            except Exception:
                logger.exception("Presence heartbeat failed")

    async def beat(self) -> None:
        """One heartbeat: extend this process's deadline (storing its entries again if they were lost), then
        sweep the entries of dead processes and announce them."""
        known = await self.backend.presence_heartbeat(self.process, self.ttl)
        self.beats += 1
        if (not known or self.dirty) and self.entries:
            self.dirty = False
            if not known:
                logger.warning("This process's presence entries had expired (heartbeats missed); storing them again")
            for socket, groups in list(self.entries.items()):
                for group, (user, member) in list(groups.items()):
                    await self.backend.presence_add(
                        group, self.connection(socket), user, member, self.process, self.ttl
                    )
                    if not is_internal(group):
                        await self._publish("join", group, member)
        gone_users: set[str] = set()
        for group, member, last in await self.backend.presence_sweep():
            if is_internal(group):
                user = json.loads(member).get("user")
                if (
                    last
                    and group.startswith(internal_group("user", ""))
                    and user is not None
                    and user not in gone_users
                ):
                    gone_users.add(user)
                    self._signals.put_nowait((False, str(user), None, None))
            else:
                await self._publish("leave", group, member)

    async def close(self) -> None:
        """Remove this process's entries (their ``leave`` events go out) and stop beating."""
        self._beat.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for socket in list(self.entries):
            with contextlib.suppress(Exception):
                await self.drop(socket)
        self.closed = True
        with contextlib.suppress(Exception):
            await self.backend.presence_forget(self.process)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._signals.join(), 5)  # the last user_disconnected signals go out
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beat
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


async def _tracker() -> Tracker:
    hub = await get_hub()
    return hub.service("presence", Tracker)


def _user_of(socket: WebSocket) -> str | None:
    user = socket.resolved_user
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return None
    return str(user.pk)


def _info(socket: WebSocket) -> Any:
    hook = socket.presence_hook
    if hook is None:
        return None
    try:
        info = hook()
        encode_json(info)
    except Exception:
        logger.exception("presence_info() of websocket %s failed; its presence info is null", socket.path)
        return None
    return info


# -- the API -----------------------------------------------------------------------


async def track(socket: WebSocket, group: str) -> None:
    """Give ``socket`` an entry in ``group`` if the group has presence (``WebSocket.join`` calls this)."""
    if not presence_enabled(group):
        return
    await socket.auser()
    await (await _tracker()).add(socket, group, _user_of(socket), _info(socket))


async def untrack(socket: WebSocket, group: str) -> None:
    """Remove ``socket``'s entry from ``group`` (``WebSocket.leave`` calls this). Idempotent."""
    hub = current_hub()
    if hub is not None and presence_enabled(group):
        await hub.service("presence", Tracker).remove(socket, group)


def discard(socket: WebSocket) -> None:
    """Remove every entry of ``socket`` in the background (it closed); synchronous and idempotent."""
    hub = current_hub()
    if hub is not None and hub.has_service("presence"):
        hub.service("presence", Tracker).discard(socket)


def tracking_users() -> bool:
    """Whether the user signals have receivers (only then are users tracked)."""
    return user_connected.has_listeners() or user_disconnected.has_listeners()


async def track_user(socket: WebSocket, user: Any) -> None:
    """Track an authenticated socket for ``user_connected``/``user_disconnected`` (if they have receivers)."""
    if not tracking_users() or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return
    await (await _tracker()).add_user(socket, user)


async def listen(group: str, listener: Listener) -> None:
    """Call ``listener(group, push)`` for each ``join``/``leave`` push of ``group`` (a ``RealtimeView`` does)."""
    await (await _tracker()).listen(group, listener)


async def unlisten(group: str, listener: Listener) -> None:
    """Stop calling ``listener``. Idempotent."""
    hub = current_hub()
    if hub is not None and hub.has_service("presence"):
        await hub.service("presence", Tracker).unlisten(group, listener)


def _check(group: str) -> None:
    validate_group(group)
    if not presence_enabled(group):
        raise ValueError(f"group {group!r} has no presence: add 'presence': True to a TETHER['GROUPS'] pattern")


def _members(texts: list[str]) -> list[PresenceMember]:
    members = []
    for text in texts:
        data = json.loads(text)
        members.append(PresenceMember(data.get("user"), data["connection"], data.get("info")))
    members.sort(key=lambda m: (m.user is None, m.user or "", m.connection))
    return members


async def presence(group: str) -> list[PresenceMember]:
    """Who is in ``group``, in every process: one ``PresenceMember`` per connection, by user.

    Raises ``ValueError`` for a group without presence, ``InvalidGroup``,
    ``BackendUnavailable``.
    """
    _check(group)
    hub = await get_hub()
    return _members(await hub.backend.presence_list(group))


async def presence_json(group: str) -> str:
    """``presence(group)`` as the members' JSON texts joined in an array (for the protocol's reply)."""
    _check(group)
    hub = await get_hub()
    return "[" + ",".join(await hub.backend.presence_list(group)) + "]"


def presence_sync(group: str) -> list[PresenceMember]:
    """``presence()`` for sync code (views, tasks, the shell); raises like it, and
    ``SynchronousOnlyOperation`` on a running event loop's thread."""
    _check(group)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SynchronousOnlyOperation("presence_sync() called from async code; use: await presence()")
    hub = current_hub()
    if hub is not None and hub.loop.is_running():
        return asyncio.run_coroutine_threadsafe(presence(group), hub.loop).result(_SYNC_TIMEOUT)
    return asyncio.run(_list_once(group))


async def _list_once(group: str) -> list[PresenceMember]:
    backend = load_backend()
    await backend.start()
    try:
        return _members(await backend.presence_list(group))
    finally:
        await backend.stop()
