"""Positions in a group's history, and which groups keep one (``TETHER["GROUPS"]``).

A group whose name matches a pattern of ``TETHER["GROUPS"]`` keeps its last
messages, each at a ``Position(offset, epoch)``: offsets grow by exactly one
per message of the group, whichever process publishes, and the epoch names
one life of the stream. When the stream is lost (Redis flushed, the table
emptied, the memory backend's process restarted) the epoch changes, so an old
position is recognised as stale instead of being read as a place in the new
stream. Groups that match no pattern stay live-only: no position, no cost.

    TETHER = {"GROUPS": {"chat.*": {"history": 500, "history_ttl": 3600, "presence": True}}}

Patterns are ``fnmatch`` patterns, tried in order; the first match wins. A
pattern may also turn on presence (``tether.presence``: who is in the group,
across processes), with or without history.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from ._types import Frame
from .conf import get_setting

__all__ = [
    "GroupOptions",
    "HistoryMessage",
    "HistoryPage",
    "JoinResult",
    "Position",
    "Retention",
    "Window",
    "parse_groups",
    "presence_enabled",
    "retention_for",
]


@dataclass(frozen=True)
class Position:
    """Where a message sits in its group's history: its ``offset`` in the stream named ``epoch``.

    Give the last one a client saw to ``socket.join(group, since=...)`` to get
    what it missed. Positions of different epochs don't compare meaningfully.
    """

    offset: int
    epoch: str

    def as_dict(self) -> dict[str, Any]:
        """``{"offset": ..., "epoch": ...}``, to send to a client as JSON."""
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass(frozen=True)
class Retention:
    """How much history a group keeps: the last ``size`` messages, none older than ``ttl`` seconds (None: any age)."""

    size: int
    ttl: float | None = None


@dataclass(frozen=True)
class HistoryMessage:
    """One stored message: the frame as broadcast (``str`` for text and JSON, ``bytes``) and its position."""

    data: Frame
    position: Position


@dataclass(frozen=True)
class HistoryPage:
    """What ``history()`` returns.

    ``messages`` in order, oldest first. ``position`` is the stream's newest
    position (offset 0 in a stream that has none yet): the ``since`` to ask
    with next. ``recovered`` is False when ``since`` was given but messages
    after it are gone (out of the window, or another epoch): then
    ``messages`` holds none of them.
    """

    messages: list[HistoryMessage]
    position: Position
    recovered: bool = True


@dataclass(frozen=True)
class JoinResult:
    """What ``join(group, since=...)`` returns.

    ``position`` is where the socket stands in a group with history (the last
    message it was given, or the stream's top when it joined): what a client
    keeps to rejoin with. None for a live-only group. ``recovered`` is True
    when ``since`` was given and every message after it was delivered; False
    without ``since``, for a live-only group, and when messages after
    ``since`` are lost (then none of the old ones are sent).
    """

    recovered: bool = False
    position: Position | None = None


@dataclass(frozen=True)
class Window:
    """A backend's answer to a history read (for the hub, not for users).

    ``epoch``; ``top``, the newest offset (0 if none yet); ``first``, the
    oldest offset the window still holds (``top + 1`` if it holds none); and
    ``entries``, ``(offset, frame)`` pairs in order.
    """

    epoch: str
    top: int
    first: int
    entries: list[tuple[int, Frame]] = field(default_factory=list)

    def holds_after(self, since: Position) -> bool:
        """Whether every message after ``since`` is in this window (or none was published since)."""
        return since.epoch == self.epoch and self.first - 1 <= since.offset <= self.top

    def page(self, since: Position | None) -> HistoryPage:
        """This read as ``history()`` returns it."""
        top = Position(self.top, self.epoch)
        if since is not None and not self.holds_after(since):
            return HistoryPage([], top, recovered=False)
        return HistoryPage([HistoryMessage(frame, Position(offset, self.epoch)) for offset, frame in self.entries], top)


@dataclass(frozen=True)
class GroupOptions:
    """What one ``TETHER["GROUPS"]`` pattern turns on: a history (``retention``, or None) and ``presence``."""

    retention: Retention | None = None
    presence: bool = False


_KNOWN = ("history", "history_ttl", "presence")


def parse_groups(value: Any) -> tuple[tuple[str, GroupOptions], ...]:
    """``TETHER["GROUPS"]`` as ``(pattern, GroupOptions)`` rules; raises ``ImproperlyConfigured`` saying what is wrong."""
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            f"TETHER['GROUPS'] must be a dict of pattern -> options, like "
            f'{{"chat.*": {{"history": 500, "history_ttl": 3600, "presence": True}}}}; got {type(value).__name__}'
        )
    rules = []
    for pattern, options in value.items():
        where = f"TETHER['GROUPS'][{pattern!r}]"
        if not isinstance(pattern, str) or not pattern:
            raise ImproperlyConfigured(f"{where}: a pattern is a non-empty str (fnmatch-style, like 'chat.*')")
        if not isinstance(options, dict):
            raise ImproperlyConfigured(f"{where} must be a dict like {{'history': 500, 'history_ttl': 3600}}")
        unknown = set(options) - set(_KNOWN)
        if unknown:
            raise ImproperlyConfigured(f"{where} has unknown option(s) {sorted(unknown)}; known: {', '.join(_KNOWN)}")
        if not options:
            raise ImproperlyConfigured(f"{where} turns nothing on: give 'history' (messages kept) and/or 'presence'")
        presence = options.get("presence", False)
        if not isinstance(presence, bool):
            raise ImproperlyConfigured(f"{where}['presence'] must be True or False, got {presence!r}")
        size = options.get("history")
        ttl = options.get("history_ttl")
        retention = None
        if size is not None or ttl is not None or not presence:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ImproperlyConfigured(f"{where}['history'] must be an int >= 1 (messages kept), got {size!r}")
            if ttl is not None and (
                not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not math.isfinite(ttl) or ttl <= 0
            ):
                raise ImproperlyConfigured(
                    f"{where}['history_ttl'] must be seconds > 0 or None (no age limit), got {ttl!r}"
                )
            retention = Retention(size, None if ttl is None else float(ttl))
        rules.append((pattern, GroupOptions(retention, presence)))
    return tuple(rules)


@lru_cache(maxsize=1)
def _rules() -> tuple[tuple[str, GroupOptions], ...]:
    return parse_groups(get_setting("GROUPS"))


_NOTHING = GroupOptions()


@lru_cache(maxsize=4096)
def _match(group: str) -> GroupOptions:
    for pattern, options in _rules():
        if fnmatch.fnmatchcase(group, pattern):
            return options
    return _NOTHING


def retention_for(group: str) -> Retention | None:
    """The history ``group`` keeps, or None for a live-only group.

    Raises ``ImproperlyConfigured`` when ``TETHER["GROUPS"]`` is malformed
    (the system check ``tether.E030`` reports it at startup too).
    """
    return _match(group).retention


def presence_enabled(group: str) -> bool:
    """Whether ``group`` has presence (its ``TETHER["GROUPS"]`` pattern says ``"presence": True``)."""
    return _match(group).presence


def _clear(*, setting: str, **kwargs: Any) -> None:
    if setting == "TETHER":
        _rules.cache_clear()
        _match.cache_clear()


setting_changed.connect(_clear)
