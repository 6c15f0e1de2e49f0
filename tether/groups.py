"""Group names and message frames: what every layer that sends to a group agrees on.

A group name is any printable text of 1 to 200 characters (``"chat.lobby"``,
``"chat.hello world"``, ``"chat.café"``), so whatever a URL segment carries
can name a room. Backends carry it unchanged or hash it (PostgreSQL's channel
names are hashed to fit 63 bytes).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._types import Frame
from .exceptions import InvalidGroup
from .websocket import encode_json

__all__ = ["MAX_GROUP_LENGTH", "encode_message", "user_group", "validate_group"]

MAX_GROUP_LENGTH = 200


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
    if isinstance(message, (dict, list)):
        return encode_json(message)
    raise TypeError(f"a broadcast message is a dict, list, str or bytes, not {type(message).__name__}")
