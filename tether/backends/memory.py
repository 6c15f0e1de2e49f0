"""The default backend: one process, no services.

Every ``MemoryBackend`` of the process shares one in-memory bus, so a publish
from any thread or event loop (``broadcast_sync`` in a sync view, a
management command) reaches the hub on its own loop. Nothing crosses a process
boundary: with more than one worker process, use Redis or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from .base import Backend, Deliver, Frame, deliver_safely

__all__ = ["MemoryBackend"]

logger = logging.getLogger("tether.backends.memory")

_lock = threading.Lock()
_subscribers: dict[str, tuple[MemoryBackend, ...]] = {}


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
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for backend in _subscribers.get(group, ()):
            loop = backend.loop
            if loop is here:
                deliver_safely(backend, logger, group, frame)
            elif loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(deliver_safely, backend, logger, group, frame)
            elif loop is not None:  # its loop is gone (a finished test, a stopped script)
                backend._forget()

    def _forget(self) -> None:
        with _lock:
            for group in self._groups:
                rest = tuple(b for b in _subscribers.get(group, ()) if b is not self)
                if rest:
                    _subscribers[group] = rest
                else:
                    _subscribers.pop(group, None)
            self._groups.clear()
