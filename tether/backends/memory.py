"""The default backend: one process, no services.

Every ``MemoryBackend`` of the process shares one in-memory bus, so a publish
from any thread or event loop (``broadcast_sync`` in a sync view, a
management command) reaches the hub on its own loop. Nothing crosses a process
boundary: with more than one worker process, use Redis or PostgreSQL.

History is a ring per group, shared by the process (``_Ring``): its epoch is
made when the ring is, so a restarted process starts new epochs and a
client's position from before is recognised as stale.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from itertools import islice
from typing import Any

from ..positions import Position, Retention, Window
from .base import Backend, Deliver, Frame, deliver_safely

__all__ = ["MemoryBackend"]

logger = logging.getLogger("tether.backends.memory")

_lock = threading.RLock()  # re-entrant: a deliver() called under it may publish again
_subscribers: dict[str, tuple[MemoryBackend, ...]] = {}


class _Ring:
    """One group's history: the last messages as ``(offset, monotonic time, frame)``."""

    __slots__ = ("entries", "epoch", "top")

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.top = 0
        self.entries: deque[tuple[int, float, Frame]] = deque()

    def prune(self, retention: Retention, now: float) -> None:
        entries = self.entries
        while len(entries) > retention.size:
            entries.popleft()
        if retention.ttl is not None:
            cutoff = now - retention.ttl
            while entries and entries[0][1] < cutoff:
                entries.popleft()


_rings: dict[str, _Ring] = {}

# presence: group -> connection -> (process, user, member); process -> deadline (monotonic)
_presence: dict[str, dict[str, tuple[str, str | None, str]]] = {}
_deadlines: dict[str, float] = {}


def _alive(process: str, now: float) -> bool:
    return _deadlines.get(process, 0.0) > now


def _others(group: str, connection: str, user: str | None, now: float) -> bool:
    """Whether a live entry of ``user`` other than ``connection`` is in ``group``."""
    if user is None:
        return False
    return any(c != connection and u == user and _alive(p, now) for c, (p, u, _) in _presence.get(group, {}).items())


def _ring(group: str) -> _Ring:
    ring = _rings.get(group)
    if ring is None:
        ring = _rings[group] = _Ring()
    return ring


class MemoryBackend(Backend):
    """In-process bus; frames are handed over as they are (no copy, no encoding)."""

    def __init__(self, deliver: Deliver | None = None, **options: Any) -> None:
        if options:
            raise TypeError(f"MemoryBackend takes no OPTIONS, got {sorted(options)}")
        super().__init__(deliver)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._groups: set[str] = set()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        for group in list(self._groups):
            await self.unsubscribe(group)

    async def subscribe(self, group: str) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        with _lock:
            if group not in self._groups:
                self._groups.add(group)
                _subscribers[group] = (*_subscribers.get(group, ()), self)

    async def unsubscribe(self, group: str) -> None:
        with _lock:
            if group in self._groups:
                self._groups.discard(group)
                rest = tuple(b for b in _subscribers.get(group, ()) if b is not self)
                if rest:
                    _subscribers[group] = rest
                else:
                    _subscribers.pop(group, None)

    async def publish(self, group: str, frame: Frame) -> None:
        """Hand ``frame`` to every subscribed hub: directly on this loop, thread-safely to others."""
        self._fan_out(group, (group, frame))

    def _fan_out(self, group: str, args: tuple[Any, ...]) -> None:
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for backend in _subscribers.get(group, ()):
            loop = backend.loop
            if loop is here:
                deliver_safely(backend, logger, *args)
            elif loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(deliver_safely, backend, logger, *args)
            elif loop is not None:  # its loop is gone (a finished test, a stopped script)
                backend._forget()

    # -- history -----------------------------------------------------------

    async def append(self, group: str, frame: Frame, retention: Retention) -> Position:
        """Store and hand over under one lock, so every hub sees a group's offsets in order."""
        with _lock:
            ring = _ring(group)
            ring.top += 1
            now = time.monotonic()
            ring.entries.append((ring.top, now, frame))
            ring.prune(retention, now)
            position = Position(ring.top, ring.epoch)
            self._fan_out(group, (group, frame, position))
        return position

    async def read(self, group: str, after: int | None, limit: int, retention: Retention) -> Window:
        with _lock:
            ring = _ring(group)
            ring.prune(retention, time.monotonic())
            entries = ring.entries
            first = entries[0][0] if entries else ring.top + 1
            if after is None:
                chosen = list(islice(entries, max(0, len(entries) - limit), None)) if limit > 0 else []
            else:
                start = max(0, after + 1 - first)
                chosen = list(islice(entries, start, start + max(0, limit)))
            return Window(ring.epoch, ring.top, first, [(offset, frame) for offset, _, frame in chosen])

    @staticmethod
    def lose_history(group: str | None = None) -> None:
        """Forget ``group``'s history (every group's with None), as a process restart would: the next
        message starts a new epoch. For tests."""
        with _lock:
            if group is None:
                _rings.clear()
            else:
                _rings.pop(group, None)

    def _forget(self) -> None:
        with _lock:
            for group in self._groups:
                rest = tuple(b for b in _subscribers.get(group, ()) if b is not self)
                if rest:
                    _subscribers[group] = rest
                else:
                    _subscribers.pop(group, None)
            self._groups.clear()

    # -- presence ------------------------------------------------------------

    async def presence_add(
        self, group: str, connection: str, user: str | None, member: str, process: str, ttl: float
    ) -> bool:
        with _lock:
            now = time.monotonic()
            _deadlines[process] = now + ttl
            _presence.setdefault(group, {})[connection] = (process, user, member)
            return not _others(group, connection, user, now)

    async def presence_remove(self, group: str, connection: str) -> tuple[str | None, bool]:
        with _lock:
            entries = _presence.get(group)
            entry = entries.pop(connection, None) if entries is not None else None
            if entries is not None and not entries:
                del _presence[group]
            if entry is None:
                return None, False
            return entry[2], not _others(group, connection, entry[1], time.monotonic())

    async def presence_list(self, group: str) -> list[str]:
        with _lock:
            now = time.monotonic()
            return [member for process, _, member in _presence.get(group, {}).values() if _alive(process, now)]

    async def presence_heartbeat(self, process: str, ttl: float) -> bool:
        with _lock:
            known = process in _deadlines
            _deadlines[process] = time.monotonic() + ttl
            return known

    async def presence_sweep(self) -> list[tuple[str, str, bool]]:
        with _lock:
            now = time.monotonic()
            dead = {process for process, deadline in _deadlines.items() if deadline <= now}
            for process in dead:
                del _deadlines[process]
            removed = []
            for group, entries in list(_presence.items()):
                gone = [(c, e) for c, e in entries.items() if e[0] not in _deadlines or e[0] in dead]
                for connection, _ in gone:
                    del entries[connection]
                if not entries:
                    del _presence[group]
                removed += [(group, e[2], not _others(group, c, e[1], now)) for c, e in gone]
            return removed

    async def presence_forget(self, process: str) -> None:
        with _lock:
            _deadlines.pop(process, None)
