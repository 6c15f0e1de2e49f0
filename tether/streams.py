"""History groups in offset order: what the hub hands its members, once each and without a gap.

Messages of a group with history (``TETHER["GROUPS"]``) arrive with a
position, but not always in order nor all of them: a message may get ahead of
one lost while the broker connection was down, or arrive twice (once live,
once read back). ``Streams`` keeps, per group this process subscribes to, the
newest offset handed out: a duplicate is dropped; a gap holds the later
messages back while the missing ones are read from the stream; after the
backend reconnects every group is read from where it stopped; a new epoch (the
stream was lost) starts over from the new stream's beginning.

The hub owns one ``Streams`` and tells it which members have which floors
(a joining socket has read the stream up to its floor itself).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._types import Frame
from .exceptions import BackendUnavailable
from .positions import Position, Retention, Window

__all__ = ["BACKFILL_BATCH", "Streams"]

logger = logging.getLogger("tether.hub")

BACKFILL_BATCH = 500  # entries read per round trip when the hub catches up

FanOut = Callable[[str, Frame, "Position | None"], None]
Read = Callable[[str, int, int, Retention], Awaitable[Window]]


class _Stream:
    """This process's place in one history group's stream: what it handed to its members so far."""

    __slots__ = ("epoch", "filling", "last", "pending", "retention")

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.epoch: str | None = None
        self.last: int | None = None  # newest offset handed to local members, in order
        self.pending: dict[int, tuple[Frame, Position]] = {}  # arrived after a gap, held until it is filled
        self.filling = False  # a backfill task reads the stream


class Streams:
    """The ordered delivery of every history group one hub subscribes to.

    ``fan_out`` hands a message to the group's members, ``read`` reads the
    backend's stream, ``spawn`` runs a background task, ``floors(group)`` lists
    the floors of the members that joined by reading the stream themselves,
    and ``forget(group)`` drops those floors (the stream they refer to is gone).
    """

    def __init__(
        self,
        fan_out: FanOut,
        read: Read,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        floors: Callable[[str], list[int]],
        forget: Callable[[str], None],
    ) -> None:
        self._fan_out, self._read, self._spawn, self._floors, self._forget = fan_out, read, spawn, floors, forget
        self._streams: dict[str, _Stream] = {}
        self.gaps = 0  # messages lost to this process because the window no longer held them

    def open(self, group: str, retention: Retention) -> None:
        """Start following ``group`` (idempotent); its first message sets where the hub starts."""
        if group not in self._streams:
            self._streams[group] = _Stream(retention)

    def close(self, group: str) -> None:
        """Stop following ``group`` (the process unsubscribed); a running backfill ends by itself."""
        self._streams.pop(group, None)

    def position(self, group: str) -> Position | None:
        """The newest position handed to ``group``'s members, if one is known."""
        stream = self._streams.get(group)
        if stream is None or stream.epoch is None or stream.last is None:
            return None
        return Position(stream.last, stream.epoch)

    def deliver(self, group: str, frame: Frame, position: Position) -> bool:
        """Take one incoming history message; False if ``group`` is not followed (the caller fans it out)."""
        stream = self._streams.get(group)
        if stream is None:
            return False
        if stream.epoch != position.epoch:
            if stream.epoch is not None:
                self._new_epoch(group, stream, position.epoch)
            stream.epoch = position.epoch
        if stream.last is None:
            stream.last = self._baseline(group, position.offset - 1)
        offset = position.offset
        if offset <= stream.last:
            return True  # a duplicate (already read from the stream)
        if stream.filling or offset > stream.last + 1:
            stream.pending[offset] = (frame, position)
            if not stream.filling:
                self._backfill(group, stream)
            return True
        stream.last = offset
        self._fan_out(group, frame, position)
        return True

    def reconnected(self) -> None:
        """The backend's listener is back: read each stream from where this process stopped."""
        for group, stream in self._streams.items():
            if stream.last is None:
                floor = self._baseline(group, -1)
                if floor >= 0:
                    stream.last = floor
            if stream.last is not None and not stream.filling:
                self._backfill(group, stream)

    def _backfill(self, group: str, stream: _Stream) -> None:
        stream.filling = True
        self._spawn(self._fill(group, stream))

    async def _fill(self, group: str, stream: _Stream) -> None:
        """Read ``group``'s stream after the last offset handed out, until the gap is closed."""
        try:
            while self._streams.get(group) is stream and stream.last is not None:
                try:
                    window = await self._read(group, stream.last, BACKFILL_BATCH, stream.retention)
                except BackendUnavailable as exc:
                    logger.warning("Reading the history of group %s failed (%s); will retry on reconnect", group, exc)
                    return
                if self._streams.get(group) is not stream or stream.last is None:
                    return
                if stream.epoch is None:
                    stream.epoch = window.epoch
                if window.epoch != stream.epoch:  # the stream was lost meanwhile: start over in the new one
                    self._new_epoch(group, stream, window.epoch)
                    continue
                if window.first > stream.last + 1:
                    self._skip(group, stream, window.first - 1, "are no longer in its history window")
                for offset, frame in window.entries:
                    if offset == stream.last + 1:
                        stream.last = offset
                        stream.pending.pop(offset, None)
                        self._fan_out(group, frame, Position(offset, window.epoch))
                self._drain(group, stream)
                if not stream.pending and stream.last >= window.top:
                    return
                if not window.entries and stream.pending:  # the stream can't fill it: skip to what arrived
                    self._skip(group, stream, min(stream.pending) - 1, "could not be read back")
                    self._drain(group, stream)
                    if not stream.pending:
                        return
        finally:
            stream.filling = False

    def _skip(self, group: str, stream: _Stream, to: int, why: str) -> None:
        """Give up the messages after ``stream.last`` up to ``to``: counted and logged, never silent."""
        assert stream.last is not None
        lost = to - stream.last
        self.gaps += lost
        logger.warning("%d message(s) of group %s (%d-%d) %s; skipped", lost, group, stream.last + 1, to, why)
        stream.last = to

    def _drain(self, group: str, stream: _Stream) -> None:
        """Hand out the held messages that follow the last one, and forget those already handed out."""
        pending = stream.pending
        assert stream.last is not None
        while stream.last + 1 in pending:
            stream.last += 1
            frame, position = pending.pop(stream.last)
            self._fan_out(group, frame, position)
        for offset in [offset for offset in pending if offset <= stream.last]:
            del pending[offset]

    def _new_epoch(self, group: str, stream: _Stream, epoch: str) -> None:
        """``group``'s stream was lost and a new one began: hand out the new one from its start."""
        logger.warning("The history of group %s was lost (new epoch %s); going on with the new one", group, epoch)
        self._forget(group)
        stream.epoch = epoch
        stream.last = 0
        stream.pending = {k: v for k, v in stream.pending.items() if v[1].epoch == epoch}

    def _baseline(self, group: str, default: int) -> int:
        """Where the hub starts handing out ``group``: the lowest offset its members already have.

        The hub makes no claim of its own until the first message arrives (two
        sockets may join at different tops); a member's floor is the top of the
        stream read that joined it, so a gap after it is read back.
        """
        return min([default, *self._floors(group)])
