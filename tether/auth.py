"""Django sessions and users on sockets, and the guards that refuse a handshake.

``socket.session`` is the session named by the handshake's session cookie
(any ``SESSION_ENGINE``); ``await socket.auser()`` resolves the user through
Django's async auth API, once per connection, and ``socket.user`` returns it
afterwards. Nothing touches the session store until someone asks.

Guards decorate a handler function or a ``SocketView`` class and run before
the handler, so a refused client never reaches ``accept()``::

    @login_required
    class ChatSocket(SocketView): ...

    @permission_required("chat.moderate")
    async def moderation(socket: WebSocket) -> None: ...

    @require(lambda socket: socket.user.is_staff)
    async def admin_feed(socket: WebSocket) -> None: ...
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar, Union, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.utils.encoding import escape_uri_path

from .codes import CloseCode
from .hub import join_user_group
from .security import refuse_handshake

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.base import SessionBase

    from .websocket import WebSocket

__all__ = [
    "Guard",
    "User",
    "get_session",
    "login_required",
    "permission_required",
    "require",
    "resolve_user",
    "run_guards",
    "user_id",
]

logger = logging.getLogger("tether.auth")

User = Union["AbstractBaseUser", "AnonymousUser"]
Refusal = tuple[int, str]  # (close code, reason)
Guard = Callable[["WebSocket"], Awaitable[Refusal | None]]
"""A guard returns None to let the handshake through, or ``(close code, reason)`` to refuse it."""

_T = TypeVar("_T", bound=Callable[..., Any])


# -- session and user ------------------------------------------------------


def get_session(socket: WebSocket) -> SessionBase:
    """The session store for the handshake's session cookie (an empty one without it).

    Building it does no I/O: the store loads on first access, so read it with
    the async accessors (``await socket.session.aget("key")``) in handlers.
    """
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(socket.cookies.get(settings.SESSION_COOKIE_NAME))
    return store


async def resolve_user(socket: WebSocket) -> User:
    """Resolve the socket's user with ``django.contrib.auth.aget_user`` (what ``socket.auser()`` runs).

    Safe to call concurrently: the lookup runs once per connection and its
    result (``AnonymousUser`` without a valid session) is kept on the socket.
    """
    if socket._user is not None:
        return socket._user
    if socket._user_lock is None:
        socket._user_lock = asyncio.Lock()
    async with socket._user_lock:
        if socket._user is None:
            from django.contrib.auth import aget_user

            user = await aget_user(cast(Any, socket))  # it reads only ``.session``
            socket._user = user
            if user.is_authenticated:
                await join_user_group(socket, user)  # "send to this user" needs no bookkeeping
    return cast("User", socket._user)


def user_id(socket: WebSocket) -> str:
    """The user for log lines: the primary key, ``anonymous``, or ``-`` if never resolved (no I/O)."""
    user = socket._user
    if user is None:
        return "-"
    return str(user.pk) if user.is_authenticated else "anonymous"


# -- guards ----------------------------------------------------------------


async def run_guards(socket: WebSocket, guards: Iterable[Guard]) -> bool:
    """Run ``guards`` in order; on the first refusal, refuse the handshake, log it and return False."""
    for guard in guards:
        refusal = await guard(socket)
        if refusal is not None:
            code, reason = refusal
            logger.warning(
                "Refused websocket %s for user %s: %s (closed %d)",
                escape_uri_path(socket.path),
                user_id(socket),
                reason,
                code,
            )
            await refuse_handshake(socket, code, reason)
            return False
    return True


def _apply(target: _T, guard: Guard) -> _T:
    """Guard a handler function (wrapped) or a SocketView class (added to its ``guards``)."""
    from .views import SocketView

    if isinstance(target, type):
        if not issubclass(target, SocketView):
            raise TypeError(f"guards decorate handler functions and SocketView classes, not {target.__name__}")
        view: type[SocketView] = target
        view.guards = (guard, *view.guards)  # outermost decorator runs first, as for functions
        return cast(_T, target)
    if not callable(target):
        raise TypeError(f"guards decorate handler functions and SocketView classes, not {target!r}")
    handler = cast(Callable[["WebSocket"], Awaitable[None]], target)

    @functools.wraps(handler)
    async def guarded(socket: WebSocket) -> None:
        if await run_guards(socket, (guard,)):
            await handler(socket)

    return cast(_T, guarded)


async def _login_guard(socket: WebSocket) -> Refusal | None:
    user = await socket.auser()
    return None if user.is_authenticated else (CloseCode.UNAUTHORIZED, "login required")


def login_required(target: _T) -> _T:
    """Refuse anonymous users before the handler runs (close 4401, or HTTP 403)."""
    return _apply(target, _login_guard)


def permission_required(perm: str | Iterable[str]) -> Callable[[_T], _T]:
    """Refuse users lacking ``perm`` (one "app_label.codename" or several): 4403, anonymous 4401.

    Checked with ``user.ahas_perms()``, so every authentication backend is asked.
    """
    perms = (perm,) if isinstance(perm, str) else tuple(perm)

    async def guard(socket: WebSocket) -> Refusal | None:
        user = await socket.auser()
        if not user.is_authenticated:
            return CloseCode.UNAUTHORIZED, "login required"
        if await cast(Any, user).ahas_perms(perms):  # PermissionsMixin, or a custom user's own
            return None
        return CloseCode.FORBIDDEN, f"permission denied (needs {', '.join(perms)})"

    return lambda target: _apply(target, guard)


def require(
    check: Callable[[WebSocket], bool] | Callable[[WebSocket], Awaitable[bool]],
    *,
    code: int = CloseCode.FORBIDDEN,
    reason: str = "forbidden",
) -> Callable[[_T], _T]:
    """Refuse the handshake with ``code`` (default 4403) unless ``check(socket)`` is true.

    ``check`` may be sync or async. The user is resolved first, so it can read
    ``socket.user``; a sync ``check`` runs in Django's sync thread
    (``sync_to_async``), so it may use the ORM.
    """
    call: Callable[[WebSocket], Awaitable[bool]]
    if iscoroutinefunction(check):
        call = cast(Callable[["WebSocket"], Awaitable[bool]], check)
    else:
        call = sync_to_async(cast(Callable[["WebSocket"], bool], check))

    async def guard(socket: WebSocket) -> Refusal | None:
        await socket.auser()
        passed: Any = await call(socket)
        if inspect.isawaitable(passed):  # a plain function that returned a coroutine
            passed = await passed
        return None if passed else (int(code), reason)

    return lambda target: _apply(target, guard)
