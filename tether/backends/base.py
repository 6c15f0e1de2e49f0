"""The one interface every broadcast backend implements.

A backend carries encoded frames between processes: ``publish(group, frame)``
sends one, and every process subscribed to ``group`` gets it back through the
``deliver(group, frame)`` callable its hub handed to the constructor. A frame
is ``str`` (a text frame) or ``bytes`` (a binary frame); backends keep that
kind across the wire (``encode_payload``/``decode_payload`` do it for bytes
transports). Delivery is at-most-once and in publish order per publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any

from django.utils.module_loading import import_string

from ..conf import get_setting

__all__ = ["Backend", "Deliver", "Frame", "decode_payload", "deliver_safely", "encode_payload", "load_backend"]

Frame = str | bytes
Deliver = Callable[[str, Frame], None]

_TEXT, _BINARY = b"t", b"b"


def encode_payload(frame: Frame) -> bytes:
    """``frame`` as bytes on the wire: one kind byte (``t`` text, ``b`` binary), then the data."""
    if isinstance(frame, str):
        return _TEXT + frame.encode()
    return _BINARY + frame


def decode_payload(payload: bytes) -> Frame:
    """The frame ``encode_payload`` made; raises ``ValueError`` on a payload of unknown kind."""
    kind, data = payload[:1], payload[1:]
    if kind == _TEXT:
        return data.decode()
    if kind == _BINARY:
        return bytes(data)
    raise ValueError(f"not a tether payload (kind byte {kind!r})")


def _no_delivery(group: str, frame: Frame) -> None:
    """The ``deliver`` of a publish-only backend (it never subscribes)."""


class Backend(ABC):
    """Base class of broadcast backends.

    One instance serves one event loop. The hub calls ``start()`` before
    anything else and ``stop()`` last; ``subscribe``/``unsubscribe`` are called
    at most once per change (the hub keeps the count of local members), and
    incoming frames go to ``self.deliver(group, frame)``, called on the loop
    the backend was started on.
    """

    def __init__(self, deliver: Deliver | None = None, **options: Any) -> None:
        self.deliver: Deliver = deliver or _no_delivery
        self.options = options

    @abstractmethod
    async def start(self) -> None:
        """Get ready to publish and subscribe. A broker that is down is retried in the
        background rather than failing here (publishing raises ``BackendUnavailable``)."""

    @abstractmethod
    async def stop(self) -> None:
        """Drop subscriptions and close connections. Idempotent."""

    @abstractmethod
    async def subscribe(self, group: str) -> None:
        """Start delivering ``group``'s frames; returns once the broker confirmed it.

        Idempotent. If the broker can't confirm in time, raises
        ``BackendUnavailable``; the subscription is still kept and made as
        soon as the broker is back.
        """

    @abstractmethod
    async def unsubscribe(self, group: str) -> None:
        """Stop delivering ``group``'s frames. Idempotent; never raises for a broker outage."""

    @abstractmethod
    async def publish(self, group: str, frame: Frame) -> None:
        """Send ``frame`` to every process subscribed to ``group`` (this one included).

        Raises ``BackendUnavailable`` when the broker can't take it: then nothing was sent.
        """


def load_backend(deliver: Deliver | None = None) -> Backend:
    """A new instance of the backend named by ``TETHER["BACKEND"]``, with ``TETHER["OPTIONS"]``."""
    path = get_setting("BACKEND")
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImportError(f"TETHER['BACKEND'] = {path!r} can't be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"TETHER['BACKEND'] = {path!r} is not a tether.backends.base.Backend subclass")
    backend: Backend = cls(deliver, **get_setting("OPTIONS"))
    return backend


class _Reconnector:
    """The listener task of a backend: started once, cancelled at stop, restarted if it ever dies,
    and, while it runs, backoff and one pair of log lines per outage as it reconnects to its broker.

    ``listener`` names it in the log ("Redis subscriber on redis://..."); ``missed``
    reads the backend's count of messages it published while the listener was down.
    """

    MIN_BACKOFF, MAX_BACKOFF = 0.02, 0.1  # seconds; doubling, so a broker back is noticed within 0.1 s

    def __init__(self, listener: str, missed: Callable[[], int], logger: logging.Logger) -> None:
        self.listener = listener
        self.missed = missed
        self.logger = logger
        self.count = 0  # reconnections so far
        self.delay = self.MIN_BACKOFF
        self.down_since: float | None = None
        self.missed_before = 0
        self.task: asyncio.Task[None] | None = None
        self._listen: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._name = ""
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def ensure_running(self, listen: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Start ``listen()`` as the listener task unless it runs already (a dead one is started again)."""
        self._listen, self._name = listen, name
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(listen(), name=name)
            self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A listener must run until cancelled: one that raised or returned is logged and started again."""
        if task.cancelled():
            return
        exc = task.exception()
        if task is not self.task or self._listen is None:
            return
        self.logger.error("%s stopped unexpectedly; starting it again", self.listener, exc_info=exc)
        self.ensure_running(self._listen, self._name)

    async def cancel(self) -> None:
        """Stop the listener task and wait for it to end. Idempotent; cancelling the caller cancels it."""
        task, self.task = self.task, None
        self._settle()
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike ``await task``, lets the caller's own cancellation through

    def _settle(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def lost(self, exc: BaseException) -> None:
        """The connection failed or dropped; logs once per outage."""
        self._settle()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.missed_before = self.missed()
            self.logger.warning("%s lost (%s); reconnecting with backoff", self.listener, exc)

    def connected(self, groups: int) -> None:
        """The listener is (again) connected and listening to ``groups`` groups."""
        self.delay = self.MIN_BACKOFF
        self._settle()
        if self.down_since is None:
            return
        self.count += 1
        self.logger.warning(
            "%s reconnected after %.2fs and listens again to %d group(s); %d message(s) this process published "
            "meanwhile were not delivered to its sockets, and what other processes published meanwhile is lost "
            "(delivery is at-most-once)",
            self.listener,
            time.monotonic() - self.down_since,
            groups,
            self.missed() - self.missed_before,
        )
        self.down_since = None

    async def backoff(self) -> None:
        """Wait before the next attempt: 0.02 s, doubling up to 0.1 s; ``retry_now()`` cuts it short."""
        try:
            await asyncio.wait_for(self._wake.wait(), self.delay)
        except (asyncio.TimeoutError, TimeoutError):  # two classes on Python 3.10
            self.delay = min(self.delay * 2, self.MAX_BACKOFF)
        self._wake.clear()

    async def retry_now(self, timeout: float) -> None:
        """Wake a listener that is down and wait (up to ``timeout``) for its next attempt to end.

        A publish calls it first, so that once the broker answers again, what
        this process publishes reaches its own sockets too.
        """
        if self.task is None or self.task.done():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(waiter, timeout)


def deliver_safely(backend: Backend, logger: logging.Logger, group: str, frame: Frame) -> None:
    """Call ``backend.deliver``: a failure there loses that frame only, logged; never the listener or publisher."""
    try:
        backend.deliver(group, frame)
    except Exception:
        logger.exception("Delivering a frame of group %s failed; it is dropped", group)
