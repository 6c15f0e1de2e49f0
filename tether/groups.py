"""Group names and message frames: what every layer that sends to a group agrees on.

A group name is any printable text of 1 to 200 characters (``"chat.lobby"``,
``"chat.hello world"``, ``"chat.café"``), so whatever a URL segment carries
can name a room. Backends carry it unchanged or hash it (PostgreSQL's channel
names are hashed to fit 63 bytes).
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from ._types import Frame
from .exceptions import InvalidGroup
from .websocket import encode_json

__all__ = ["MAX_GROUP_LENGTH", "encode_message", "internal_group", "is_internal", "user_group", "validate_group"]

MAX_GROUP_LENGTH = 200

logger = logging.getLogger("tether.hub")

_CHANNELS_TYPE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")  # "chat.message": Channels' handler-method names
_warned_types: set[str] = set()
_MAX_WARNED_TYPES = 100  # bounded: a type per message id must not grow the set for ever


def validate_group(group: str) -> str:
    """Return ``group`` if it is a usable name, else raise ``InvalidGroup`` saying why.

    A name is 1 to 200 printable characters (``str.isprintable()``: letters of
    any script, digits, punctuation and spaces; no control characters).
    """
    if not isinstance(group, str):
        raise InvalidGroup(f"a group name is a str, not {type(group).__name__}")
    if not group:
        raise InvalidGroup("a group name can't be empty")
    if len(group) > MAX_GROUP_LENGTH:
        raise InvalidGroup(f"group name {group[:20]!r}... is {len(group)} characters; the limit is {MAX_GROUP_LENGTH}")
    if not group.isprintable():
        bad = sorted({c for c in group if not c.isprintable()})
        raise InvalidGroup(f"group name {group!r} has unprintable characters {bad!r}")
    return group


_INTERNAL = "\x1e"  # unprintable: no group a user names can start with it


def internal_group(kind: str, name: str) -> str:
    """A backend channel of tether's own (``kind``, e.g. ``"presence"``, for ``name``): never a valid group name,
    so no socket can join it and no application group can collide with it."""
    return f"{_INTERNAL}{kind}{_INTERNAL}{name}"


def is_internal(group: str) -> bool:
    """Whether ``group`` is a channel made by ``internal_group``."""
    return group.startswith(_INTERNAL)


def user_group(user: Any) -> str:
    """The group every authenticated socket of ``user`` is in: ``"user.<pk>"``.

    ``user`` is a user object or its primary key; any primary key maps to a
    valid name, distinct for distinct keys (one too long or unprintable for
    a group name is hashed: ``"user#<sha256>"``). An anonymous user has none:
    raises ``InvalidGroup`` (check ``user.is_authenticated`` first).
    """
    if hasattr(user, "pk") or hasattr(user, "is_authenticated"):
        if not getattr(user, "is_authenticated", True) or getattr(user, "pk", None) is None:
            raise InvalidGroup("an anonymous user has no user group; check user.is_authenticated first")
        user = user.pk
    if user is None or isinstance(user, bool):
        raise InvalidGroup(f"user_group() takes a user or a primary key, not {user!r}")
    key = str(user)
    name = f"user.{key}"
    if len(name) <= MAX_GROUP_LENGTH and name.isprintable():
        return name
    return "user#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def encode_message(message: Any) -> Frame:
    """The frame for ``message``: ``dict``/``list`` -> JSON text, ``str`` -> text, ``bytes`` -> binary.

    Raises ``TypeError`` for anything else (and for values JSON can't encode).
    """
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, dict):
        _warn_channels_type(message)
        return encode_json(message)
    if isinstance(message, list):
        return encode_json(message)
    raise TypeError(f"a broadcast message is a dict, list, str or bytes, not {type(message).__name__}")


def _warn_channels_type(message: dict[Any, Any]) -> None:
    """Log once per type a broadcast whose ``"type"`` looks like a Channels handler name ("chat.message").

    Under Channels that key picked the consumer method to call (``chat_message``);
    tether calls none and sends the message as is, so a leftover key reaches the
    browser as data. A client protocol of one's own may well use such a key,
    hence a warning once per distinct type, never an error.
    """
    kind = message.get("type")
    if not isinstance(kind, str) or kind in _warned_types or len(_warned_types) >= _MAX_WARNED_TYPES:
        return
    if _CHANNELS_TYPE.fullmatch(kind):
        _warned_types.add(kind)
        logger.warning(
            'A broadcast message has "type": %r, which tether sends to the sockets as data: no %s() method is '
            "called, as Channels did. If it is left over from Channels, drop the key (do that method's work "
            "before broadcasting, or per socket in SocketView.group_message()); if your client reads it, ignore "
            "this: it is logged once per type.",
            kind,
            kind.replace(".", "_"),
        )
