"""The one interface every broadcast backend implements.

A backend carries encoded frames between processes: ``publish(group, frame)``
sends one, and every process subscribed to ``group`` gets it back through the
``deliver(group, frame)`` callable its hub handed to the constructor. A frame
is ``str`` (a text frame) or ``bytes`` (a binary frame); backends keep that
kind across the wire (``encode_payload``/``decode_payload`` do it for bytes
transports). Delivery is at-most-once and in publish order per publisher.

History (groups matching ``TETHER["GROUPS"]``): ``append(group, frame,
retention)`` stores the frame at the group's next offset and publishes it in
one atomic step, and the frame is delivered as ``deliver(group, frame,
position)``; ``read(group, after, limit, retention)`` returns a ``Window`` of
what the stream holds. After its listener reconnects, a backend calls
``self.reconnected()``, so the hub can backfill what it missed meanwhile.

Presence (``tether.presence``): ``presence_add``/``presence_remove``/
``presence_list`` keep one entry per group and connection, owned by a process
that ``presence_heartbeat`` keeps alive; ``presence_sweep`` removes the
entries of processes that stopped beating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from django.utils.module_loading import import_string

from ..conf import get_setting
from ..positions import Position, Retention, Window

__all__ = [
    "Backend",
    "Deliver",
    "Frame",
    "decode_message",
    "decode_payload",
    "deliver_safely",
    "encode_entry",
    "encode_payload",
    "load_backend",
]

Frame = str | bytes


class Deliver(Protocol):
    """The hub's callback: ``deliver(group, frame)`` for a live-only group, with the position for history."""

    def __call__(self, group: str, frame: Frame, position: Position | None = None, /) -> None: ...


_TEXT, _BINARY, _POSITIONED = b"t", b"b", b"p"


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


def encode_entry(position: Position, frame: Frame) -> bytes:
    """A history message on the wire: ``p<offset> <epoch>\\n`` then ``encode_payload(frame)``."""
    return b"%s%d %s\n%s" % (_POSITIONED, position.offset, position.epoch.encode(), encode_payload(frame))


def decode_message(payload: bytes) -> tuple[Frame, Position | None]:
    """The frame (and position, for a history message) that ``encode_payload``/``encode_entry`` made.

    Raises ``ValueError`` on a payload that is neither.
    """
    if payload[:1] == _POSITIONED:
        head, sep, rest = payload[1:].partition(b"\n")
        offset, _, epoch = head.partition(b" ")
        if not sep or not epoch:
            raise ValueError("malformed positioned payload")
        return decode_payload(rest), Position(int(offset), epoch.decode())
    return decode_payload(payload), None


def _no_delivery(group: str, frame: Frame, position: Position | None = None, /) -> None:
    """The ``deliver`` of a publish-only backend (it never subscribes)."""


def _no_reconnect() -> None:
    """The ``reconnected`` of a backend no hub listens to."""


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
        self.reconnected: Callable[[], None] = _no_reconnect  # the hub sets it to backfill its history groups
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

    def publish_in_transaction(self, group: str, frame: Frame, retention: Retention | None, using: str | None) -> bool:
        """Make publishing ``frame`` part of the caller's open transaction on database ``using``
        (``broadcast_on_commit``), if this backend can: then a rollback sends nothing and a commit
        sends once. Returns False when it can't (the default): the caller publishes on commit.
        Synchronous; runs in the caller's thread."""
        return False

    # -- history (groups matching TETHER["GROUPS"]) ----------------------------

    async def append(self, group: str, frame: Frame, retention: Retention) -> Position:
        """Store ``frame`` at ``group``'s next offset and publish it with that position, atomically.

        Offsets grow by one per group across every process; the epoch is
        created with the stream and changes only when the stream is lost.
        Keeps at most ``retention.size`` messages, none older than
        ``retention.ttl``. Raises ``BackendUnavailable`` like ``publish``
        (then nothing was stored nor sent).
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no history; use a group that matches no GROUPS pattern")

    async def read(self, group: str, after: int | None, limit: int, retention: Retention) -> Window:
        """What ``group``'s stream holds: the first ``limit`` entries after offset ``after``, or, with
        ``after=None``, the last ``limit``. Creates the stream's epoch if it has none yet, so a position
        given before the first message stays valid. Raises ``BackendUnavailable``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no history; use a group that matches no GROUPS pattern")

    # -- presence (tether.presence) ----------------------------------------------
    # One entry per (group, connection), owned by a process id; a process is alive while its
    # deadline (refreshed by presence_heartbeat) is in the future. Entries of a dead process are
    # invisible to presence_list/presence_add/presence_remove and removed by presence_sweep.
    # Events (join/leave) are ordinary publishes on a channel of tether's own; the backend only stores.

    async def presence_add(
        self, group: str, connection: str, user: str | None, member: str, process: str, ttl: float
    ) -> bool:
        """Store ``member`` (JSON text) for ``connection`` in ``group``, owned by ``process``, and extend
        ``process``'s deadline to ``ttl`` seconds from now. Returns True when no other live entry of
        ``user`` is in the group (always True for ``user`` None). Raises ``BackendUnavailable``."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")

    async def presence_remove(self, group: str, connection: str) -> tuple[str | None, bool]:
        """Remove ``connection``'s entry from ``group``: returns the member it held (None if there was
        none: then this call removed nothing) and whether no other live entry of its user remains."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")

    async def presence_list(self, group: str) -> list[str]:
        """The members (JSON texts) of ``group``'s live entries, in no particular order."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")

    async def presence_heartbeat(self, process: str, ttl: float) -> bool:
        """Extend ``process``'s deadline to ``ttl`` seconds from now. Returns False when ``process``
        was unknown (new, or swept as dead meanwhile: its entries are gone and must be added again)."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")

    async def presence_sweep(self) -> list[tuple[str, str, bool]]:
        """Remove the entries of every process past its deadline, each claimed by exactly one caller:
        ``(group, member, last)`` per removed entry, ``last`` when no live entry of its user remains."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")

    async def presence_forget(self, process: str) -> None:
        """Drop ``process``'s deadline (it stops cleanly after removing its entries)."""
        raise NotImplementedError(f"{type(self).__name__} has no presence")


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

    STOP_TIMEOUT = 5.0  # seconds a stop waits for the listener to end before abandoning it

    async def cancel(self) -> None:
        """Stop the listener task and wait (up to ``STOP_TIMEOUT``) for it to end.

        Idempotent; cancelling the caller cancels it. The listener is cancelled
        again each second it has not ended: before Python 3.12,
        ``asyncio.wait_for`` can swallow a cancellation that arrives as its inner
        await completes, and the listener would go on for ever (a test suite's
        hub stop hung on it). One that still hasn't ended is abandoned, logged.
        """
        task, self.task = self.task, None
        self._settle()
        if task is None:
            return
        deadline = time.monotonic() + self.STOP_TIMEOUT
        while not task.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.logger.warning("%s did not stop within %.0fs; abandoned", self.listener, self.STOP_TIMEOUT)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                return
            task.cancel()
            # unlike ``await task``, asyncio.wait lets the caller's own cancellation through
            await asyncio.wait([task], timeout=min(1.0, remaining))

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

    def connected(self, groups: int) -> bool:
        """The listener is (again) connected and listening to ``groups`` groups; True if it was a reconnection."""
        self.delay = self.MIN_BACKOFF
        self._settle()
        if self.down_since is None:
            return False
        self.count += 1
        self.logger.warning(
            "%s reconnected after %.2fs and listens again to %d group(s); %d message(s) this process published "
            "meanwhile were not delivered to its sockets, and what other processes published meanwhile is lost "
            "for live-only groups; groups with history are backfilled from their streams "
            "(delivery is at-most-once)",
            self.listener,
            time.monotonic() - self.down_since,
            groups,
            self.missed() - self.missed_before,
        )
        self.down_since = None
        return True

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


def deliver_safely(
    backend: Backend, logger: logging.Logger, group: str, frame: Frame, position: Position | None = None
) -> None:
    """Call ``backend.deliver``: a failure there loses that frame only, logged; never the listener or publisher."""
    try:
        if position is None:
            backend.deliver(group, frame)
        else:
            backend.deliver(group, frame, position)
    except Exception:
        logger.exception("Delivering a frame of group %s failed; it is dropped", group)
