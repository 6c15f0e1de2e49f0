"""Broadcast from anywhere: async code, sync views, threads, management commands, ``on_commit``.

Under ASGI every publish goes through the server's hub (``tether.hub``),
whichever thread it comes from. Where no hub runs (a WSGI view, a Celery
worker, the shell) a small background thread per process runs a publish-only
backend, so no event loop is needed. This module uses the hub's public
surface only; the hub knows nothing of it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from functools import partial
from typing import Any, TypeVar

from django.core.exceptions import SynchronousOnlyOperation
from django.core.signals import setting_changed
from django.db import transaction

from ._types import Frame
from .backends.base import Backend, load_backend
from .backends.memory import MemoryBackend
from .exceptions import BackendUnavailable
from .groups import encode_message, validate_group
from .hub import current_hub, get_hub
from .positions import HistoryPage, Position, retention_for

__all__ = ["MEMORY_BACKEND_HINT", "broadcast", "broadcast_on_commit", "broadcast_sync", "history", "history_sync"]

T = TypeVar("T")

logger = logging.getLogger("tether.hub")

MEMORY_BACKEND_HINT = (
    "uses the memory backend, which reaches only this process's sockets: nothing reaches a server's sockets. "
    "Fix: set TETHER['BACKEND'] to tether.backends.redis.RedisBackend or tether.backends.postgres.PostgresBackend"
)
"""Why a publish from a process with no server (a shell, a command, a worker) reaches no one."""

_SYNC_TIMEOUT = 30.0  # seconds broadcast_sync() waits for the backend before giving up


async def broadcast(group: str, message: Any) -> Position | None:
    """Send ``message`` to every socket in ``group``, in every process.

    Encoded once (see ``encode_message``). Returns once the backend took it:
    its ``Position`` in a group with history (``TETHER["GROUPS"]``), else
    None. Raises ``InvalidGroup``, ``TypeError`` for a message it can't
    encode, and ``BackendUnavailable`` when the broker is down (nothing was sent).
    """
    frame = encode_message(message)
    validate_group(group)
    loop = asyncio.get_running_loop()
    hub = current_hub()
    if hub is not None and hub.loop is not loop and hub.loop.is_running():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(hub.publish(group, frame), hub.loop))
    return await (await get_hub()).publish(group, frame)


async def history(group: str, since: Position | None = None, limit: int = 50) -> HistoryPage:
    """Stored messages of a group with history, oldest first, with their positions.

    With ``since``: the first ``limit`` messages after it (page forward by
    passing the last one's position); ``page.recovered`` is False, and
    ``page.messages`` empty, when messages after ``since`` are gone. Without:
    the last ``limit``. ``page.position`` is the newest position. Raises
    ``ValueError`` for a group without history and ``BackendUnavailable``.
    """
    validate_group(group)
    loop = asyncio.get_running_loop()
    hub = current_hub()
    if hub is not None and hub.loop is not loop and hub.loop.is_running():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(hub.history(group, since, limit), hub.loop))
    return await (await get_hub()).history(group, since, limit)


def history_sync(group: str, since: Position | None = None, limit: int = 50) -> HistoryPage:
    """``history()`` for sync code (views, tasks, the shell); raises like it, and
    ``SynchronousOnlyOperation`` on a running event loop's thread."""
    validate_group(group)
    _refuse_on_loop("history_sync()", "await history()")
    hub = current_hub()
    if hub is not None and hub.loop.is_running():
        return _wait(asyncio.run_coroutine_threadsafe(hub.history(group, since, limit), hub.loop))
    return _get_publisher().call(lambda backend: _read_history(backend, group, since, limit))


async def _read_history(backend: Backend, group: str, since: Position | None, limit: int) -> HistoryPage:
    """``Hub.history`` without a hub (the publisher thread's backend)."""
    retention = retention_for(group)
    if retention is None:
        raise ValueError(f"group {group!r} keeps no history: add a pattern matching it to TETHER['GROUPS']")
    window = await backend.read(group, None if since is None else since.offset, limit, retention)
    return window.page(since)


async def _send(backend: Backend, group: str, frame: Frame) -> Position | None:
    """``Hub.publish`` without a hub (the publisher thread's backend)."""
    retention = retention_for(group)
    if retention is None:
        await backend.publish(group, frame)
        return None
    return await backend.append(group, frame, retention)


def _refuse_on_loop(name: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SynchronousOnlyOperation(
        f"{name} was called on a running event loop's thread, where it would block the loop: use {instead} in async code"
    )


def broadcast_sync(group: str, message: Any) -> Position | None:
    """``broadcast()`` for sync code: views (ASGI or WSGI), Celery tasks, management commands, the shell.

    Blocks until the backend took the message. Under ASGI it publishes through
    the server's hub; elsewhere through a small background publisher thread
    (one per process, started on first use). Raises like ``broadcast()``, and
    ``SynchronousOnlyOperation`` at once when called on a running event loop's
    thread (it would block that loop: ``await broadcast()`` there).
    """
    frame = encode_message(message)
    validate_group(group)
    return _publish_frame_sync(group, frame)


def _publish_frame_sync(group: str, frame: Frame) -> Position | None:
    _refuse_on_loop("broadcast_sync()", "await broadcast()")
    hub = current_hub()
    if hub is not None and hub.loop.is_running():
        return _wait(asyncio.run_coroutine_threadsafe(hub.publish(group, frame), hub.loop))
    return _get_publisher().call(lambda backend: _send(backend, group, frame))


def broadcast_on_commit(group: str, message: Any, using: str | None = None) -> None:
    """Broadcast ``message`` when the current transaction on ``using`` commits; never if it rolls back.

    The message is validated and encoded now, so a bad one raises here and
    not after the commit. Outside a transaction it is sent at once.
    """
    frame = encode_message(message)
    validate_group(group)
    hub = current_hub()
    backend = hub.backend if hub is not None else _outbox_backend()
    if backend.publish_in_transaction(group, frame, retention_for(group), using):
        return  # part of the transaction: sent by its commit, never by a rollback
    transaction.on_commit(partial(_publish_frame_sync, group, frame), using=using)


_outbox: Backend | None = None


def _outbox_backend() -> Backend:
    """A never-started instance of the configured backend, to ask whether it publishes in a transaction."""
    global _outbox
    if _outbox is None:
        _outbox = load_backend()
    return _outbox


def _wait(future: Future[T]) -> T:
    try:
        return future.result(_SYNC_TIMEOUT)
    except (TimeoutError, FutureTimeoutError):  # two classes on Python 3.10, one from 3.11
        future.cancel()
        raise BackendUnavailable(f"the backend did not take the message within {_SYNC_TIMEOUT:.0f}s") from None


class _Publisher:
    """A daemon thread running an event loop with a publish-only backend, for sync callers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.backend: Backend | None = None
        self._starting: asyncio.Lock | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="tether-publisher", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def publish(self, group: str, frame: Frame) -> Position | None:
        return self.call(lambda backend: _send(backend, group, frame))

    def call(self, work: Callable[[Backend], Awaitable[T]]) -> T:
        """Run ``work(backend)`` on the publisher's loop and wait for its result."""
        return _wait(asyncio.run_coroutine_threadsafe(self._call(work), self.loop))

    async def _call(self, work: Callable[[Backend], Awaitable[T]]) -> T:
        backend = self.backend
        if backend is None:
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:  # two first callers at once start one backend
                if self.backend is None:
                    started = load_backend()
                    await started.start()
                    if isinstance(started, MemoryBackend):
                        logger.warning(
                            "broadcast_sync() with no server running in this process %s", MEMORY_BACKEND_HINT
                        )
                    self.backend = started
            backend = self.backend
            assert backend is not None
        return await work(backend)

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


def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    global _publisher, _outbox
    if setting == "TETHER":
        _outbox = None
        if _publisher is not None:
            _publisher.close()
        _publisher = None


setting_changed.connect(_reset_on_settings_change)
