"""Django sessions and users on sockets.

``socket.session`` is the session named by the handshake's session cookie
(any ``SESSION_ENGINE``); ``await socket.auser()`` resolves the user through
Django's own ``aget_user`` (so the session's auth hash is verified: a session
invalidated by a password change has no user), once per connection. Nothing
touches the session store until someone asks. Joining ``user_group(user)`` is
not done here but where the socket is served (``tether.routing``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.contrib.auth import aget_user

from ._types import User
from .websocket import WebSocket

if TYPE_CHECKING:
    from django.contrib.sessions.backends.base import SessionBase

__all__ = ["User", "get_session", "has_session_cookie", "resolve_user", "user_id"]


def get_session(socket: WebSocket) -> SessionBase:
    """The session store for the handshake's session cookie (an empty one without it).

    Building it does no I/O: the store loads on first access, so read it with
    the async accessors (``await socket.session.aget("key")``) in handlers.
    """
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(socket.cookies.get(settings.SESSION_COOKIE_NAME))
    return store


def has_session_cookie(socket: WebSocket) -> bool:
    """Whether the handshake carried a session cookie (no I/O): only then can there be a user."""
    return bool(socket.cookies.get(settings.SESSION_COOKIE_NAME))


async def resolve_user(socket: WebSocket) -> User:
    """The socket's user by ``django.contrib.auth.aget_user`` (``AnonymousUser`` without a valid session).

    What ``socket.auser()`` runs (it keeps the result); no side effects.
    """
    return cast(User, await aget_user(cast(Any, socket)))  # it reads only ``.session``


def user_id(socket: WebSocket) -> str:
    """The user for log lines: the primary key, ``anonymous``, or ``-`` if never resolved (no I/O)."""
    user = socket.resolved_user
    if user is None:
        return "-"
    return str(user.pk) if user.is_authenticated else "anonymous"
