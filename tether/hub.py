"""The hub: this process's registry of groups, and one writer per socket.

One hub per process, bound to the event loop that serves the sockets. It keeps
``group -> local members`` and subscribes to a group on the backend once,
however many local sockets joined it, unsubscribing when the last one leaves.
``join()`` returns only once the backend delivers the group, for every caller.

An incoming frame is appended to each member's bounded outbound queue, which
one writer task per socket drains; the hub never awaits a member, so a slow
client delays no one but itself. When its queue is full,
``TETHER["OVERFLOW"]`` decides:

- ``"close"`` (default): terminate it with 1013 (try again later) and log a
  line; its membership, queue and writer are released at once, its handler is
  woken with ``Disconnected(1013)``, and the close frame gets
  ``CLOSE_TIMEOUT`` seconds to go out;
- ``"drop_oldest"`` / ``"drop_newest"``: keep it open and drop one message.

Every message dropped adds to ``Hub.dropped_messages``. Publishing lives in
``tether.publish``, which uses only this module's public surface.

Groups with history (``TETHER["GROUPS"]``, see ``tether.positions``) arrive
with a position, and the hub hands them to its members strictly in offset
order (``tether.streams``): a duplicate is dropped, and a gap (a message that
got ahead of one lost while the broker connection was down) holds the later
ones back while the missing ones are read from the stream. After the backend
reconnects, every such group is read from its last offset, so sockets see no
gap the window covers. ``join(group, since=position)`` buffers the group's
live messages for the new member while it reads the stream after ``since``,
then sends those and the buffered ones without overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from django.core.signals import setting_changed

from ._types import Frame
from .backends.base import Backend, load_backend
from .closing import close_for_exception
from .codes import CloseCode
from .conf import get_setting
from .exceptions import BackendUnavailable, InvalidState
from .groups import is_internal, user_group, validate_group
from .positions import HistoryPage, JoinResult, Position, Retention, Window, retention_for
from .streams import Streams
from .websocket import ConnectionState, WebSocket

__all__ = [
    "OVERFLOW_POLICIES",
    "Hub",
    "HubService",
    "Watcher",
    "current_hub",
    "discard",
    "get_hub",
    "groups_of",
    "join_user_group",
    "leave",
    "stop_hub",
]

logger = logging.getLogger("tether.hub")

OVERFLOW_POLICIES = ("close", "drop_oldest", "drop_newest")

Watcher = Callable[[str, Frame], None]
"""A process-level listener of a group (``Hub.watch``): called with ``(group, frame)`` on the hub's loop."""


class HubService(Protocol):
    """Something that lives as long as a hub (``Hub.service``): closed when the hub stops."""

    async def close(self) -> None:
        """Release what it holds; called once, on the hub's loop, before the backend stops."""


S = TypeVar("S", bound=HubService)

Item = tuple[str, Frame, "Position | None"]  # one delivery: group, frame, position (history groups)

_MAX_OFFSET = 2**53  # offsets past this can't be a real stream's (Lua numbers are doubles)


class _Member:
    """One socket's side of the hub: its groups, its outbound queue and its writer task."""

    __slots__ = ("buffers", "dropped", "floors", "groups", "hub", "queue", "socket", "task", "waiter")

    def __init__(self, hub: Hub, socket: WebSocket) -> None:
        self.hub = hub
        self.socket = socket
        self.groups: set[str] = set()
        self.queue: deque[Item] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        # history groups being joined: their live messages wait here while the stream is read
        self.buffers: dict[str, list[Item]] | None = None
        # history groups whose offsets up to the floor this socket has (from the stream): skip those
        self.floors: dict[str, int] | None = None
        self.task = hub.loop.create_task(self._write(), name=f"tether-writer {socket.path}")

    def offer(self, item: Item) -> None:
        """Queue one delivery without ever waiting; a full queue applies the overflow policy."""
        if item[2] is not None and (self.buffers is not None or self.floors is not None) and self._held(item):
            return
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

    def _held(self, item: Item) -> bool:
        """Whether a history message is buffered (the group is being joined) or one this socket has."""
        group, _, position = item
        assert position is not None
        if self.buffers is not None:
            buffer = self.buffers.get(group)
            if buffer is not None:
                buffer.append(item)
                return True
        if self.floors is not None:
            floor = self.floors.get(group)
            if floor is not None:
                if position.offset <= floor:
                    return True
                del self.floors[group]  # past it: from here on the hub's order is this socket's
                if not self.floors:
                    self.floors = None
        return False

    def forget(self, group: str) -> None:
        """Drop ``group``'s buffer and floor (the socket left it)."""
        if self.buffers is not None:
            self.buffers.pop(group, None)
            if not self.buffers:
                self.buffers = None
        if self.floors is not None:
            self.floors.pop(group, None)
            if not self.floors:
                self.floors = None

    async def _write(self) -> None:
        """Drain the queue into the socket, in order, until the socket closes."""
        socket = self.socket
        queue = self.queue
        popleft = queue.popleft
        send_frame = socket.send_frame  # checks the state right before each send, after any await
        loop = self.hub.loop
        try:
            while True:
                if queue:
                    if socket.connection_state is ConnectionState.CONNECTING and not await socket.wait_open():
                        return  # refused or closed before accept(): nothing goes out
                    while queue:
                        group, frame, position = popleft()
                        hook = socket.group_hook
                        if hook is not None:
                            transformed = await hook(group, frame, position)
                            if transformed is None:
                                continue
                            frame = transformed
                        if not await send_frame(frame):
                            return
                state = socket.connection_state
                if state is ConnectionState.CLOSING or state is ConnectionState.CLOSED:
                    return
                self.waiter = loop.create_future()
                await self.waiter
        except Exception as exc:  # group_message() raised
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
        self.streams = Streams(self._fan_out, self._read, self._spawn, self._floors, self._forget_floors)
        self.backend.reconnected = self.streams.reconnected
        self.queue_size = int(get_setting("QUEUE_SIZE"))
        if self.queue_size < 1:
            raise ValueError(f"TETHER['QUEUE_SIZE'] must be at least 1, got {self.queue_size}")
        self.high_water = max(1, self.queue_size // 2)
        self.pressure = False  # some queue passed high_water since the last publish
        self.overflow: str = get_setting("OVERFLOW")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"TETHER['OVERFLOW'] = {self.overflow!r}; choose one of {', '.join(OVERFLOW_POLICIES)}")
        self.groups: dict[str, dict[_Member, None]] = {}  # ordered: delivery follows join order
        self.members: dict[WebSocket, _Member] = {}
        self.dropped_messages = 0
        self.published = 0
        self._fanout: dict[str, tuple[_Member, ...]] = {}  # snapshot per group, rebuilt on change
        self._watchers: dict[str, list[Watcher]] = {}  # process-level listeners per group (watch())
        self._subscribed: set[str] = set()  # groups the backend confirmed (or will make on reconnect)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # per group: lock, [tasks using it]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started: asyncio.Future[None] | None = None
        self._services: dict[str, HubService] = {}
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
                self._started = None  # the next caller tries again
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        """Drop every membership and stop the backend. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for name, service in reversed(list(self._services.items())):
            try:
                await service.close()
            except Exception:
                logger.exception("Closing the hub's %s service failed", name)
        tasks = [member.task for member in self.members.values()] + list(self._tasks)
        for member in list(self.members.values()):
            member.task.cancel()
            self._drop_member(member)
        for task in tasks:
            task.cancel()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)  # none outlives stop()
        if self._started is not None and self._started.done() and not self._started.exception():
            await self.backend.stop()

    def service(self, name: str, factory: Callable[[Hub], S]) -> S:
        """The hub's ``name`` service (e.g. presence), made by ``factory(hub)`` on first use; closed at ``stop()``."""
        service = self._services.get(name)
        if service is None:
            if self.stopped:
                raise InvalidState("the hub is stopped (server shutting down)")
            service = self._services[name] = factory(self)
        return service  # type: ignore[return-value]

    def has_service(self, name: str) -> bool:
        """Whether the ``name`` service exists (without making it)."""
        return name in self._services

    # -- membership -------------------------------------------------------

    async def join(self, socket: WebSocket, group: str, since: Position | None = None) -> JoinResult:
        """Add ``socket`` to ``group``; returns once the backend delivers it. Idempotent.

        For a group with history, ``since`` (a position the client saw) first
        sends every later message the window holds, in order, then the live
        ones, without gap or overlap; the result says whether that was all of
        them (``recovered``) and where the socket stands (``position``).
        Raises ``InvalidGroup`` for a bad name and ``InvalidState`` on a closed
        socket. If the broker is down, the membership is kept (the backend
        makes it when the broker is back) and a warning logged; a history
        group's read then raises ``BackendUnavailable``.
        """
        validate_group(group)
        if self.stopped:
            raise InvalidState("the hub is stopped (server shutting down)")
        state = socket.connection_state
        if state is ConnectionState.CLOSING or state is ConnectionState.CLOSED:
            raise InvalidState(f"join({group!r}) on a closed socket")
        retention = retention_for(group)
        member = self.members.get(socket)
        if member is None:
            member = self.members[socket] = _Member(self, socket)
        joined = group in member.groups
        if not joined:
            member.groups.add(group)
            self.groups.setdefault(group, {})[member] = None
            self._fanout[group] = tuple(self.groups[group])
            if retention is not None:
                if member.buffers is None:
                    member.buffers = {}
                member.buffers[group] = []  # live messages wait until the stream is read
        try:
            if group not in self._subscribed:
                await self._reconcile(group)  # a concurrent joiner waits here for the same subscription
            if retention is None:
                return JoinResult()
            if joined:
                return JoinResult(False, self.streams.position(group))
            if since is not None and not (isinstance(since.offset, int) and 0 <= since.offset < _MAX_OFFSET):
                since = Position(-1, "")  # a client's nonsense: nothing to recover, never a broker error
            after = since.offset if since is not None and since.offset >= 0 else None
            window = await self.backend.read(group, after, 0 if after is None else retention.size, retention)
        except BaseException:
            if not joined and member.buffers is not None and group in member.buffers:
                self._release(member, group, retention, None)
            raise
        return self._release(member, group, retention, (window, since))

    def _release(
        self, member: _Member, group: str, retention: Retention | None, read: tuple[Window, Position | None] | None
    ) -> JoinResult:
        """End a history join: send what the stream read holds after ``since``, then the buffered live messages."""
        buffered = member.buffers.pop(group, []) if member.buffers is not None else []
        if member.buffers is not None and not member.buffers:
            member.buffers = None
        if group not in member.groups:
            return JoinResult()
        if read is None:  # the read failed: go on live, from whatever arrives
            for item in buffered:
                member.offer(item)
            return JoinResult()
        window, since = read
        if group in self._subscribed and retention is not None:  # followed from now on: a reconnect reads
            self.streams.open(group, retention)  # the stream from this socket's floor
        entries = window.entries
        recovered = (
            since is not None
            and window.holds_after(since)
            and (not entries or entries[0][0] == since.offset + 1)
            and (entries[-1][0] if entries else since.offset) >= window.top
        )
        cursor = window.top
        if recovered:
            for offset, frame in entries:
                member.offer((group, frame, Position(offset, window.epoch)))
            if entries:
                cursor = max(cursor, entries[-1][0])
        if member.floors is None:
            member.floors = {}
        member.floors[group] = cursor
        for item in buffered:
            member.offer(item)
        return JoinResult(recovered, Position(cursor, window.epoch))

    async def leave(self, socket: WebSocket, group: str) -> None:
        """Remove ``socket`` from ``group``. Idempotent: leaving a group not joined does nothing."""
        validate_group(group)
        member = self.members.get(socket)
        if member is None or group not in member.groups:
            return
        member.groups.discard(group)
        member.forget(group)
        self._remove(member, group)
        await self._settle(group)

    async def watch(self, group: str, callback: Watcher) -> None:
        """Call ``callback(group, frame)`` for each frame this process receives on ``group``, as if
        it were a member; for listeners of the process rather than a socket (tether's revocation
        messages). Returns once the backend delivers the group. Idempotent per callback; the
        callback must not block (it runs in the delivery path) and what it raises is logged.
        ``group`` may be a channel of tether's own (``tether.groups.internal_group``).
        """
        if not is_internal(group):
            validate_group(group)
        if self.stopped:
            raise InvalidState("the hub is stopped (server shutting down)")
        callbacks = self._watchers.setdefault(group, [])
        if callback not in callbacks:
            callbacks.append(callback)
        if group not in self._subscribed:
            await self._reconcile(group)

    async def unwatch(self, group: str, callback: Watcher) -> None:
        """Stop calling ``callback`` for ``group``. Idempotent."""
        callbacks = self._watchers.get(group)
        if callbacks is None or callback not in callbacks:
            return
        callbacks.remove(callback)
        if not callbacks:
            del self._watchers[group]
        await self._settle(group)

    def discard(self, socket: WebSocket) -> None:
        """Drop all of ``socket``'s memberships and stop its writer (the socket is closing).

        Synchronous, idempotent and safe from a ``finally``: backend
        unsubscriptions run in the background.
        """
        member = self.members.get(socket)
        if member is None:
            return
        if member.task is not asyncio.current_task():
            member.task.cancel()
        self._drop_member(member)

    def groups_of(self, socket: WebSocket) -> frozenset[str]:
        member = self.members.get(socket)
        return frozenset(member.groups) if member is not None else frozenset()

    def _drop_member(self, member: _Member) -> None:
        if self.members.get(member.socket) is member:
            del self.members[member.socket]
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
        if group in self._subscribed and group not in self.groups and group not in self._watchers:
            await self._reconcile(group)

    async def _reconcile(self, group: str) -> None:
        """Make the backend subscription match the local membership (one change at a time per group)."""
        lock, users = self._locks.setdefault(group, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            await self._reconcile_locked(group, lock)
        finally:
            users[0] -= 1
            if not users[0] and group not in self.groups and group not in self._subscribed:
                self._locks.pop(group, None)

    async def _reconcile_locked(self, group: str, lock: asyncio.Lock) -> None:
        async with lock:
            while True:  # the membership may change while the broker answers: until they agree
                wanted = (group in self.groups or group in self._watchers) and not self.stopped
                if wanted and group not in self._subscribed:
                    await self.start()
                    try:
                        await self.backend.subscribe(group)
                    except BackendUnavailable as exc:
                        logger.warning("Group %s joined while the broker is unreachable (%s); it is kept", group, exc)
                    self._subscribed.add(group)  # only now: concurrent joiners wait on the lock until here
                elif not wanted and group in self._subscribed:
                    self._subscribed.discard(group)
                    self.streams.close(group)
                    try:
                        await self.backend.unsubscribe(group)
                    except Exception:
                        logger.exception("Unsubscribing from group %s failed", group)
                else:
                    return

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.stopped or self.loop.is_closed():
            coro.close()
            return
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("tether hub task %s failed", task.get_name(), exc_info=task.exception())

    # -- messages ---------------------------------------------------------

    async def publish(self, group: str, frame: Frame) -> Position | None:
        """Hand an encoded frame to the backend (which delivers it here too, if joined).

        Returns the message's position in a group with history, else None.
        """
        await self.start()
        retention = retention_for(group)
        if retention is None:
            await self.backend.publish(group, frame)
            position = None
        else:
            position = await self.backend.append(group, frame, retention)
        self.published += 1
        if self.pressure:  # a publisher that never awaits anything else would fill every queue
            self.pressure = False
            await asyncio.sleep(0)
        return position

    async def history(self, group: str, since: Position | None = None, limit: int = 50) -> HistoryPage:
        """Up to ``limit`` stored messages of ``group``: the first ones after ``since``, or the last ones.

        Raises ``ValueError`` for a group without history, ``BackendUnavailable``.
        """
        validate_group(group)
        retention = retention_for(group)
        if retention is None:
            raise ValueError(f"group {group!r} keeps no history: add a pattern matching it to TETHER['GROUPS']")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        await self.start()
        window = await self.backend.read(group, None if since is None else since.offset, limit, retention)
        return window.page(since)

    def _deliver(self, group: str, frame: Frame, position: Position | None = None) -> None:
        """Called by the backend for each incoming frame: queue it for every local member.

        A history message goes through ``self.streams``: in offset order, once.
        """
        if position is not None:
            if self.streams.deliver(group, frame, position):
                return
            retention = retention_for(group) if group in self._subscribed else None
            if retention is not None:  # a history group joined without a stream read (it failed): follow it now
                self.streams.open(group, retention)
                self.streams.deliver(group, frame, position)
                return
        self._fan_out(group, frame, position)

    def _floors(self, group: str) -> list[int]:
        """The floors of ``group``'s members that joined by reading its stream (``Streams``' baseline)."""
        return [m.floors[group] for m in self._fanout.get(group, ()) if m.floors is not None and group in m.floors]

    def _forget_floors(self, group: str) -> None:
        for member in self._fanout.get(group, ()):
            member.forget(group)

    async def _read(self, group: str, after: int, limit: int, retention: Retention) -> Window:
        return await self.backend.read(group, after, limit, retention)

    def _fan_out(self, group: str, frame: Frame, position: Position | None) -> None:
        watchers = self._watchers.get(group)
        if watchers is not None:
            for callback in watchers:
                try:
                    callback(group, frame)
                except Exception:
                    logger.exception("A watcher of group %s failed", group)
        members = self._fanout.get(group)
        if not members:
            return
        item = (group, frame, position)
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
        self._spawn(socket.terminate(CloseCode.TRY_AGAIN_LATER, "too slow: outbound queue full"))

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: groups, members, published and dropped messages, background tasks."""
        return {
            "groups": len(self.groups),
            "members": len(self.members),
            "history_gaps": self.streams.gaps,
            "published": self.published,
            "dropped_messages": self.dropped_messages,
            "tasks": len(self._tasks),
        }


# -- the process's hub ------------------------------------------------------

_hub: Hub | None = None
_retired: list[Hub] = []  # replaced after a settings change, stopped by the next stop_hub()


def current_hub() -> Hub | None:
    """The process's hub if one is live (no I/O, creates nothing)."""
    hub = _hub
    return hub if hub is not None and not hub.stopped else None


async def get_hub() -> Hub:
    """The process's hub, created and started on the running loop on first use.

    Raises ``InvalidState`` when another live event loop already serves the
    process's sockets (one loop per process serves them all). A hub left on a
    loop that still runs but serves nobody is stopped there.
    """
    global _hub
    loop = asyncio.get_running_loop()
    hub = _hub
    if hub is None or hub.loop is not loop or hub.stopped:
        if hub is not None and not hub.stopped and hub.members and hub.loop.is_running():
            raise InvalidState("the hub already serves sockets on another event loop; use one loop per process")
        if hub is not None and not hub.stopped:
            _stop_elsewhere(hub)
        hub = _hub = Hub(loop)
    await hub.start()
    return hub


def _stop_elsewhere(hub: Hub) -> None:
    """Stop a hub whose loop is not ours: on that loop if it still runs, else just mark it (its loop is gone)."""
    if hub.loop.is_running() and not hub.loop.is_closed():
        asyncio.run_coroutine_threadsafe(hub.stop(), hub.loop)
    else:
        hub.stopped = True


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
        elif not hub.stopped:
            _stop_elsewhere(hub)


def _hubs_of(socket: WebSocket) -> list[Hub]:
    return [hub for hub in (_hub, *_retired) if hub is not None and socket in hub.members]


async def leave(socket: WebSocket, group: str) -> None:
    """Take ``socket`` out of ``group`` in whichever hub holds it. Idempotent."""
    validate_group(group)
    for hub in _hubs_of(socket):
        await hub.leave(socket, group)


def groups_of(socket: WebSocket) -> frozenset[str]:
    """The groups ``socket`` is in (no I/O)."""
    hubs = _hubs_of(socket)
    return hubs[0].groups_of(socket) if hubs else frozenset()


def discard(socket: WebSocket) -> None:
    """Drop every membership of ``socket`` (it is closing); synchronous and idempotent."""
    for hub in _hubs_of(socket):
        hub.discard(socket)


async def join_user_group(socket: WebSocket, user: Any) -> bool:
    """Make ``socket`` a member of ``user_group(user)`` if the user is authenticated.

    Returns whether it joined; idempotent; may run before ``accept()`` (messages wait).
    """
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return False
    await (await get_hub()).join(socket, user_group(user))
    return True


def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    global _hub
    if setting == "TETHER":
        if _hub is not None:
            _retired.append(_hub)
        _hub = None


setting_changed.connect(_reset_on_settings_change)
