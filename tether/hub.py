"""The hub: this process's registry of groups, and broadcast from anywhere.

One hub per process, bound to the event loop that serves the sockets. It keeps
``group -> local members`` and subscribes to a group on the backend once,
however many local sockets joined it, unsubscribing when the last one leaves.

A published message is encoded once (``dict``/``list`` -> one JSON text
frame, ``str`` -> text, ``bytes`` -> binary) and the same frame is appended to
each member's bounded outbound queue, which one writer task per socket drains.
The publisher never awaits a member, so a slow client delays no one but
itself; when its queue is full, ``TETHER["OVERFLOW"]`` decides:

- ``"close"`` (default): close it with 1013 (try again later) and log a line;
  a client that can't keep up is better reconnected than silently lagging;
- ``"drop_oldest"`` / ``"drop_newest"``: keep it open and drop one message.

Every message dropped (or discarded with a closed queue) adds to
``Hub.dropped_messages``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import transaction

from .backends.base import Backend, Frame, load_backend
from .codes import CloseCode
from .conf import get_setting
from .exceptions import BackendUnavailable, Disconnected, InvalidGroup, InvalidState
from .websocket import ConnectionState, encode_json

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = [
    "OVERFLOW_POLICIES",
    "Hub",
    "broadcast",
    "broadcast_on_commit",
    "broadcast_sync",
    "encode_message",
    "get_hub",
    "join_user_group",
    "stop_hub",
    "user_group",
    "validate_group",
]

logger = logging.getLogger("tether.hub")

GroupHook = Callable[[str, Frame], Awaitable[Frame | None]]

OVERFLOW_POLICIES = ("close", "drop_oldest", "drop_newest")
MAX_GROUP_LENGTH = 100
_GROUP_RE = re.compile(r"[A-Za-z0-9_.:\-]+")
_SYNC_TIMEOUT = 30.0  # seconds broadcast_sync() waits for the backend before giving up


def validate_group(group: str) -> str:
    """Return ``group`` if it is a usable name, else raise ``InvalidGroup`` saying why.

    A name is 1 to 100 ASCII letters, digits and ``_ . : -`` (e.g.
    ``"chat.lobby"``, ``"user.42"``): the set every backend carries unchanged.
    """
    if not isinstance(group, str):
        raise InvalidGroup(f"a group name is a str, not {type(group).__name__}")
    if not group:
        raise InvalidGroup("a group name can't be empty")
    if len(group) > MAX_GROUP_LENGTH:
        raise InvalidGroup(f"group name {group[:20]!r}... is {len(group)} characters; the limit is {MAX_GROUP_LENGTH}")
    if not _GROUP_RE.fullmatch(group):
        bad = sorted({c for c in group if not _GROUP_RE.fullmatch(c)})
        raise InvalidGroup(
            f"group name {group!r} has characters {''.join(bad)!r}; use ASCII letters, digits and _ . : - only"
        )
    return group


def user_group(user: Any) -> str:
    """The group every authenticated socket of ``user`` is in: ``"user.<pk>"``.

    ``user`` is a user object or its primary key. An anonymous user has none:
    raises ``InvalidGroup`` (check ``user.is_authenticated`` first).
    """
    if hasattr(user, "pk") or hasattr(user, "is_authenticated"):
        if not getattr(user, "is_authenticated", True) or getattr(user, "pk", None) is None:
            raise InvalidGroup("an anonymous user has no user group; check user.is_authenticated first")
        user = user.pk
    if user is None or isinstance(user, bool):
        raise InvalidGroup(f"user_group() takes a user or a primary key, not {user!r}")
    return validate_group(f"user.{user}")


def encode_message(message: Any) -> Frame:
    """The frame for ``message``: ``dict``/``list`` -> JSON text, ``str`` -> text, ``bytes`` -> binary.

    Raises ``TypeError`` for anything else (and for values JSON can't encode).
    """
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, (dict, list)):
        return encode_json(message)
    raise TypeError(f"a broadcast message is a dict, list, str or bytes, not {type(message).__name__}")


class _Member:
    """One socket's side of the hub: its groups, its outbound queue and its writer task."""

    __slots__ = ("dropped", "groups", "hub", "queue", "socket", "task", "waiter")

    def __init__(self, hub: Hub, socket: WebSocket) -> None:
        self.hub = hub
        self.socket = socket
        self.groups: set[str] = set()
        self.queue: deque[tuple[str, Frame]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.task = hub.loop.create_task(self._write(), name=f"tether-writer {socket.path}")

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def offer(self, item: tuple[str, Frame]) -> None:
        """Queue one delivery without ever waiting; a full queue applies the overflow policy."""
        queue = self.queue
        hub = self.hub
        size = len(queue)
        if size >= hub.queue_size:
            if hub.overflow == "drop_newest":
                self.dropped += 1
                hub.dropped_messages += 1
                return
            if hub.overflow == "drop_oldest":
                queue.popleft()
                self.dropped += 1
                hub.dropped_messages += 1
            else:
                hub._close_slow(self)
                return
        elif size >= hub.high_water:
            hub.pressure = True  # the next publish on this loop yields once so writers can drain
        queue.append(item)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _write(self) -> None:
        """Drain the queue into the socket, in order, until the socket closes."""
        socket = self.socket
        queue = self.queue
        popleft = queue.popleft
        send = socket._send  # the loop checks the state that _send_frame() would
        loop = self.hub.loop
        open_ = ConnectionState.OPEN
        try:
            while True:
                while queue and socket.connection_state is open_:
                    group, frame = popleft()
                    hook = socket._group_hook
                    if hook is not None:
                        transformed = await hook(group, frame)
                        if transformed is None:
                            continue
                        frame = transformed
                    if type(frame) is str:
                        await send({"type": "websocket.send", "text": frame})
                    else:
                        await send({"type": "websocket.send", "bytes": frame})
                state = socket.connection_state
                if state is ConnectionState.CLOSING or state is ConnectionState.CLOSED:
                    return
                # nothing queued, or not accepted yet: wait for offer() or accept()
                self.waiter = loop.create_future()
                await self.waiter
        except OSError:  # the client is gone (e.g. uvicorn's ClientDisconnected)
            socket._closed_by_peer({"code": CloseCode.ABNORMAL_CLOSURE})
        except (Disconnected, InvalidState):
            return  # the socket closed under us: the router drops the membership
        except Exception as exc:  # group_message() raised
            from .routing import close_for_exception

            await close_for_exception(socket, exc)
        finally:
            self.hub._drop_member(self)


class Hub:
    """This process's groups, bound to the event loop serving its sockets.

    Use the module functions (``broadcast``, ``WebSocket.join``...); the hub
    is created and started on first use, or at ASGI lifespan startup.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Backend | None = None) -> None:
        self.loop = loop
        self.backend = backend if backend is not None else load_backend(self._deliver)
        self.backend.deliver = self._deliver
        self.queue_size = int(get_setting("QUEUE_SIZE"))
        if self.queue_size < 1:
            raise ValueError(f"TETHER['QUEUE_SIZE'] must be at least 1, got {self.queue_size}")
        self.high_water = max(1, self.queue_size // 2)
        self.pressure = False  # some queue passed high_water since the last publish
        self.overflow: str = get_setting("OVERFLOW")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"TETHER['OVERFLOW'] = {self.overflow!r}; choose one of {', '.join(OVERFLOW_POLICIES)}")
        self.groups: dict[str, dict[_Member, None]] = {}  # ordered: delivery follows join order
        self.dropped_messages = 0
        self.published = 0
        self._fanout: dict[str, tuple[_Member, ...]] = {}  # snapshot per group, rebuilt on change
        self._subscribed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Future[None] | None = None
        self.stopped = False

    def __repr__(self) -> str:
        return f"<Hub {type(self.backend).__name__} groups={len(self.groups)}>"

    async def start(self) -> None:
        """Start the backend. Idempotent; concurrent callers wait for the one start."""
        if self._started is None:
            self._started = self.loop.create_future()
            try:
                await self.backend.start()
            except BaseException as exc:
                self._started.set_exception(exc)
                self._started.exception()  # retrieved: the caller below raises it
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        """Drop every membership and stop the backend. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        members = {m for group in self.groups.values() for m in group}
        for member in members:
            member.task.cancel()
            self._drop_member(member)
        for task in list(self._tasks):
            task.cancel()
        if self._started is not None and self._started.done() and not self._started.exception():
            await self.backend.stop()

    # -- membership -------------------------------------------------------

    async def join(self, socket: WebSocket, group: str) -> None:
        """Add ``socket`` to ``group``; returns once the backend delivers it. Idempotent.

        Raises ``InvalidGroup`` for a bad name and ``InvalidState`` on a closed
        socket. If the broker is down, the membership is kept (it is made when
        the broker is back) and a warning logged.
        """
        validate_group(group)
        if self.stopped:
            raise InvalidState("the hub is stopped (server shutting down)")
        if socket.connection_state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            raise InvalidState(f"join({group!r}) on a closed socket")
        member = socket._member
        if member is None or member.hub is not self:
            member = socket._member = _Member(self, socket)
        if group in member.groups:
            return
        member.groups.add(group)
        self.groups.setdefault(group, {})[member] = None
        self._fanout[group] = tuple(self.groups[group])
        if group not in self._subscribed:
            await self._reconcile(group)

    async def leave(self, socket: WebSocket, group: str) -> None:
        """Remove ``socket`` from ``group``. Idempotent: leaving a group not joined does nothing."""
        validate_group(group)
        member = socket._member
        if member is None or group not in member.groups:
            return
        member.groups.discard(group)
        self._remove(member, group)
        await self._settle(group)

    def discard(self, socket: WebSocket) -> None:
        """Drop all of ``socket``'s memberships and stop its writer (the socket is closing).

        Synchronous, idempotent and safe from a ``finally``: backend
        unsubscriptions run in the background.
        """
        member = socket._member
        if member is None:
            return
        if member.task is not asyncio.current_task():
            member.task.cancel()
        self._drop_member(member)

    def _drop_member(self, member: _Member) -> None:
        if member.socket._member is member:
            member.socket._member = None
        member.queue.clear()
        member.waiter = None
        groups, member.groups = member.groups, set()
        for group in groups:
            self._remove(member, group)
            self._spawn(self._settle(group))

    def _remove(self, member: _Member, group: str) -> None:
        members = self.groups.get(group)
        if members is None:
            return
        members.pop(member, None)
        if members:
            self._fanout[group] = tuple(members)
        else:
            del self.groups[group]
            self._fanout.pop(group, None)

    async def _settle(self, group: str) -> None:
        if group in self._subscribed and group not in self.groups:
            await self._reconcile(group)

    async def _reconcile(self, group: str) -> None:
        """Make the backend subscription match the local membership (one change at a time per group)."""
        lock = self._locks.setdefault(group, asyncio.Lock())
        async with lock:
            wanted = group in self.groups and not self.stopped
            if wanted and group not in self._subscribed:
                await self.start()
                self._subscribed.add(group)
                try:
                    await self.backend.subscribe(group)
                except BackendUnavailable as exc:
                    logger.warning("Group %s joined while the broker is unreachable (%s); it is kept", group, exc)
            elif not wanted and group in self._subscribed:
                self._subscribed.discard(group)
                try:
                    await self.backend.unsubscribe(group)
                except Exception:
                    logger.exception("Unsubscribing from group %s failed", group)
            if group not in self.groups and group not in self._subscribed and not lock._waiters:
                self._locks.pop(group, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.stopped or self.loop.is_closed():
            coro.close()
            return
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- messages ---------------------------------------------------------

    async def publish(self, group: str, frame: Frame) -> None:
        """Hand an encoded frame to the backend (which delivers it here too, if joined)."""
        await self.start()
        await self.backend.publish(group, frame)
        self.published += 1
        if self.pressure:  # a publisher that never awaits anything else would fill every queue
            self.pressure = False
            await asyncio.sleep(0)

    def _deliver(self, group: str, frame: Frame) -> None:
        """Called by the backend for each incoming frame: queue it for every local member."""
        members = self._fanout.get(group)
        if not members:
            return
        item = (group, frame)
        for member in members:
            member.offer(item)

    def _close_slow(self, member: _Member) -> None:
        socket = member.socket
        lost = len(member.queue) + 1
        member.dropped += lost
        self.dropped_messages += lost
        logger.warning(
            "Closing websocket %s with %d: %d messages queued and it isn't reading them (TETHER OVERFLOW='close')",
            socket.path,
            CloseCode.TRY_AGAIN_LATER,
            len(member.queue),
        )
        member.task.cancel()
        self._drop_member(member)
        self._spawn(socket.close(CloseCode.TRY_AGAIN_LATER, "too slow: outbound queue full"))

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: groups, members, published and dropped messages."""
        members = {m for group in self.groups.values() for m in group}
        return {
            "groups": len(self.groups),
            "members": len(members),
            "published": self.published,
            "dropped_messages": self.dropped_messages,
        }


# -- the process's hub ------------------------------------------------------

_hub: Hub | None = None


def _usable(hub: Hub | None, loop: asyncio.AbstractEventLoop) -> bool:
    return hub is not None and hub.loop is loop and not hub.stopped


async def get_hub() -> Hub:
    """The process's hub, created and started on the running loop on first use.

    Raises ``InvalidState`` when another live event loop already serves the
    process's sockets (one loop per process serves them all).
    """
    global _hub
    loop = asyncio.get_running_loop()
    hub = _hub
    if not _usable(hub, loop):
        if hub is not None and not hub.stopped and hub.groups and hub.loop.is_running():
            raise InvalidState("the hub already serves sockets on another event loop; use one loop per process")
        if hub is not None:
            hub.stopped = True  # its loop is gone (e.g. a finished test): nothing left to run on
        hub = _hub = Hub(loop)
    assert hub is not None
    await hub.start()
    return hub


async def stop_hub() -> None:
    """Stop the process's hub (ASGI lifespan shutdown, end of a test). Idempotent."""
    global _hub
    hubs = [*_retired, _hub]
    _hub = None
    _retired.clear()
    loop = asyncio.get_running_loop()
    for hub in hubs:
        if hub is None:
            continue
        if hub.loop is loop:
            await hub.stop()
        else:
            hub.stopped = True  # its loop is gone or elsewhere: nothing to await here


_retired: list[Hub] = []  # replaced after a settings change, stopped by the next stop_hub()


def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    global _hub, _publisher
    if setting == "TETHER":
        if _hub is not None:
            _retired.append(_hub)
        _hub = None
        if _publisher is not None:
            _publisher.close()
        _publisher = None


setting_changed.connect(_reset_on_settings_change)


async def join_user_group(socket: WebSocket, user: Any) -> bool:
    """Make ``socket`` a member of ``user_group(user)`` if the user is authenticated.

    The one call the auth code makes once it knows the socket's user. Returns
    whether it joined; idempotent; may run before ``accept()`` (messages wait).
    """
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return False
    await socket.join(user_group(user))
    return True


# -- broadcast --------------------------------------------------------------


async def broadcast(group: str, message: Any) -> None:
    """Send ``message`` to every socket in ``group``, in every process.

    Encoded once (see ``encode_message``). Returns once the backend took it;
    raises ``InvalidGroup``, ``TypeError`` for a message it can't encode, and
    ``BackendUnavailable`` when the broker is down (nothing was sent).
    """
    frame = encode_message(message)
    validate_group(group)
    loop = asyncio.get_running_loop()
    hub = _hub
    if hub is not None and hub.loop is not loop and hub.loop.is_running() and not hub.stopped:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(hub.publish(group, frame), hub.loop))
        return
    await (await get_hub()).publish(group, frame)


def broadcast_sync(group: str, message: Any) -> None:
    """``broadcast()`` for sync code: views (ASGI or WSGI), Celery tasks, management commands, the shell.

    Blocks until the backend took the message. Under ASGI it publishes through
    the server's hub; elsewhere through a small background publisher thread
    (one per process, started on first use) so no event loop is needed.
    Raises like ``broadcast()``.
    """
    frame = encode_message(message)
    validate_group(group)
    _publish_frame_sync(group, frame)


def _publish_frame_sync(group: str, frame: Frame) -> None:
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    hub = _hub
    if hub is not None and hub.loop is not here and hub.loop.is_running() and not hub.stopped:
        _wait(asyncio.run_coroutine_threadsafe(hub.publish(group, frame), hub.loop))
    else:
        _get_publisher().publish(group, frame)


def broadcast_on_commit(group: str, message: Any, using: str | None = None) -> None:
    """Broadcast ``message`` when the current transaction on ``using`` commits; never if it rolls back.

    The message is validated and encoded now, so a bad one raises here and
    not after the commit. Outside a transaction it is sent at once.
    """
    frame = encode_message(message)
    validate_group(group)
    transaction.on_commit(partial(_publish_frame_sync, group, frame), using=using)


def _wait(future: Future[None]) -> None:
    try:
        future.result(_SYNC_TIMEOUT)
    except TimeoutError:
        future.cancel()
        raise BackendUnavailable(f"the backend did not take the message within {_SYNC_TIMEOUT:.0f}s") from None


class _Publisher:
    """A daemon thread running an event loop with a publish-only backend, for sync callers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.backend: Backend | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="tether-publisher", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def publish(self, group: str, frame: Frame) -> None:
        _wait(asyncio.run_coroutine_threadsafe(self._publish(group, frame), self.loop))

    async def _publish(self, group: str, frame: Frame) -> None:
        if self.backend is None:
            backend = load_backend()
            await backend.start()
            self.backend = backend
        await self.backend.publish(group, frame)

    def close(self) -> None:
        """Stop the backend and the thread (at interpreter exit). Idempotent."""
        if self.loop.is_closed() or not self.thread.is_alive():
            return
        if self.backend is not None:
            try:
                asyncio.run_coroutine_threadsafe(self.backend.stop(), self.loop).result(5)
            except Exception:
                logger.debug("tether publisher backend did not stop cleanly", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def _get_publisher() -> _Publisher:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.pid != os.getpid() or not _publisher.thread.is_alive():
            _publisher = _Publisher()
        return _publisher
