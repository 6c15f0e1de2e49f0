"""Guards: checks that refuse a handshake before the handler runs.

They decorate a handler function or a ``SocketView`` class, so a refused
client never reaches ``accept()``::

    @login_required
    class ChatSocket(SocketView): ...

    @permission_required("chat.moderate")
    async def moderation(socket: WebSocket) -> None: ...

    @require(lambda socket: socket.user.is_staff)
    async def admin_feed(socket: WebSocket) -> None: ...

A guard is an async callable returning None (let it through) or ``(close
code, reason)``. On a function the decorator wraps it; on a class it is added
to the class's ``guards``, which ``SocketView.as_handler()`` runs before the
view exists (this module never imports the views).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.utils.encoding import escape_uri_path

from .auth import user_id
from .codes import CloseCode
from .websocket import WebSocket

__all__ = ["Guard", "Refusal", "login_required", "permission_required", "require", "run_guards"]

logger = logging.getLogger("tether.auth")

Refusal = tuple[int, str]  # (close code, reason)
Guard = Callable[[WebSocket], Awaitable[Refusal | None]]
"""A guard returns None to let the handshake through, or ``(close code, reason)`` to refuse it."""

_T = TypeVar("_T", bound=Callable[..., Any])


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
            await socket.deny(code, reason)
            return False
    return True


def _apply(target: _T, guard: Guard) -> _T:
    """Guard a handler function (wrapped) or a SocketView class (added to its ``guards``)."""
    if isinstance(target, type):
        if not callable(getattr(target, "as_handler", None)) or not isinstance(getattr(target, "guards", None), tuple):
            raise TypeError(f"guards decorate handler functions and SocketView classes, not {target.__name__}")
        target.guards = (guard, *target.guards)  # type: ignore[attr-defined]  # outermost decorator runs first
        return target
    if not callable(target):
        raise TypeError(f"guards decorate handler functions and SocketView classes, not {target!r}")
    handler = cast(Callable[[WebSocket], Awaitable[None]], target)

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
        call = cast(Callable[[WebSocket], Awaitable[bool]], check)
    else:
        call = sync_to_async(cast(Callable[[WebSocket], bool], check))

    async def guard(socket: WebSocket) -> Refusal | None:
        await socket.auser()
        passed: Any = await call(socket)
        if inspect.isawaitable(passed):  # a plain function that returned a coroutine
            passed = await passed
        return None if passed else (int(code), reason)

    return lambda target: _apply(target, guard)
