"""Exceptions raised by tether.

The tree::

    TetherError
     ├── Disconnected(code, reason)   the peer left, or the socket was closed
     ├── InvalidState                 programmer misuse: wrong call for the socket's state
     ├── InvalidMessage(code, ...)    the peer sent something the handler can't take
     ├── InvalidGroup                 a group name that can't be used
     ├── InvalidToken(reason)         a handshake's bearer token is tampered, expired or voided
     └── BackendUnavailable           the broker behind broadcast() can't be reached

``Disconnected`` is the normal end of a connection; ``InvalidState`` is always a
bug in the calling code, and its message says how to fix it.
"""

from __future__ import annotations

from .codes import CloseCode

__all__ = [
    "BackendUnavailable",
    "Disconnected",
    "InvalidGroup",
    "InvalidMessage",
    "InvalidState",
    "InvalidToken",
    "TetherError",
]


class TetherError(Exception):
    """Base class of every exception tether raises on purpose."""


class Disconnected(TetherError):
    """The connection is closed: the client went away or the socket was closed.

    ``code`` is the close code (1006 when the connection dropped without one).
    """

    def __init__(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket disconnected with code {int(code)}" + (f": {reason}" if reason else ""))


class InvalidState(TetherError):
    """A method was called in a state that doesn't allow it (e.g. send before accept)."""


class InvalidMessage(TetherError):
    """The client sent a message the handler can't take.

    Raised by ``receive_json()`` on malformed JSON (code 1007) and by
    ``receive_text()``/``receive_bytes()`` on a frame of the other kind (code
    1003). Left uncaught, it closes the socket with ``code`` and logs a warning.
    """

    def __init__(self, message: str, code: int = CloseCode.INVALID_DATA) -> None:
        self.code = code
        super().__init__(message)


class InvalidGroup(TetherError, ValueError):
    """A group name is empty, too long or has characters a backend can't carry."""


class InvalidToken(TetherError):
    """A bearer token can't be used: ``reason`` says why ("bad signature", "expired", "password changed"...).

    Raised at the handshake; the router refuses it with 4401 (HTTP 403). The
    message never holds the token itself.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid token: {reason}")


class BackendUnavailable(TetherError):
    """The broadcast backend can't be reached (e.g. Redis is down); nothing was sent."""
