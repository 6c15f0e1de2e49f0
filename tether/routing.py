"""Resolve a WebSocket scope to its route and run the handler.

Resolution goes through Django's own resolver (so ``include()`` and namespaces
work) and only accepts patterns made by ``tether.urls.websocket``. Running a
handler turns every way it can end into a defined close: a peer leaving is
normal, ``InvalidMessage`` closes with its code, any other exception closes
with 1011 and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from django.core.signals import setting_changed
from django.urls import Resolver404, ResolverMatch, get_resolver, set_script_prefix
from django.utils.encoding import escape_uri_path

from ._types import Receive, Scope, Send
from .auth import user_id
from .codes import CloseCode
from .conf import get_setting
from .exceptions import Disconnected, InvalidMessage, InvalidState
from .limits import limit_receive
from .security import origin_refusal, refuse_handshake
from .urls import Handler, get_handler
from .websocket import ConnectionState, WebSocket

__all__ = ["WebSocketRouter", "close_for_exception", "resolve_websocket"]

logger = logging.getLogger("tether.routing")
connection_logger = logging.getLogger("tether.connection")
security_logger = logging.getLogger("tether.security")


def _path_info(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


@functools.lru_cache(maxsize=1024)
def _resolve(urlconf: str | None, path: str) -> tuple[ResolverMatch | None, str]:
    try:
        match = get_resolver(urlconf).resolve(path)
    except Resolver404:
        return None, "no URL pattern matches"
    if get_handler(match.func) is None:
        return None, f"it resolves to the HTTP view {match._func_path}, not a websocket() route"
    return match, ""


def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in ("ROOT_URLCONF", "TETHER"):
        _resolve.cache_clear()


setting_changed.connect(_clear_cache)


def resolve_websocket(path: str) -> ResolverMatch | None:
    """The match for a websocket route at ``path``, or None (cached per path)."""
    return _resolve(get_setting("URLCONF"), path)[0]


class WebSocketRouter:
    """The ASGI application for ``websocket`` scopes; keeps the set of open sockets."""

    def __init__(self) -> None:
        self.sockets: set[WebSocket] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = limit_receive(receive)  # the limits' settings, read once per connection
        socket = WebSocket(scope, limited or receive, send)
        if limited is not None:
            limited.socket = socket
        socket.max_message_size = get_setting("MAX_MESSAGE_SIZE")
        handshake_timeout = get_setting("HANDSHAKE_TIMEOUT")
        try:
            if handshake_timeout is None:
                await socket._await_connect()
            else:
                await asyncio.wait_for(socket._await_connect(), handshake_timeout)
        except Disconnected:
            return
        except InvalidState as exc:  # a server bug, but not one to crash on
            logger.warning("Gave up on websocket %s: %s", escape_uri_path(_path_info(scope)), exc)
            return
        except asyncio.TimeoutError:
            logger.warning(
                "Gave up on websocket %s: no websocket.connect from the server within HANDSHAKE_TIMEOUT=%gs",
                escape_uri_path(_path_info(scope)),
                handshake_timeout,
            )
            return
        set_script_prefix(str(scope.get("root_path", "")) or "/")
        path = _path_info(scope)
        match, why = _resolve(get_setting("URLCONF"), path)
        if match is None:
            logger.warning("Rejected websocket %s: %s (closed %d)", escape_uri_path(path), why, CloseCode.NOT_FOUND)
            await refuse_handshake(socket, CloseCode.NOT_FOUND, "no such websocket route")
            return
        socket.resolver_match = match
        refusal = origin_refusal(socket)
        if refusal is not None:
            security_logger.warning(
                "Refused websocket %s: %s (closed %d)", escape_uri_path(path), refusal, CloseCode.FORBIDDEN
            )
            await refuse_handshake(socket, CloseCode.FORBIDDEN, "origin not allowed")
            return
        handler = get_handler(match.func)
        assert handler is not None
        try:
            await self.serve(socket, handler)
        finally:
            if limited is not None:
                limited.stop()

    async def serve(self, socket: WebSocket, handler: Handler) -> None:
        """Run ``handler`` to its end and leave the socket closed, whatever happened."""
        self.sockets.add(socket)
        started = time.monotonic()
        if connection_logger.isEnabledFor(logging.INFO):
            client = socket.client
            connection_logger.info(
                "websocket %s connecting from %s",
                escape_uri_path(socket.path),
                f"{client[0]}:{client[1]}" if client else "-",
            )
        try:
            await handler(socket)
        except Exception as exc:
            await close_for_exception(socket, exc)
        except asyncio.CancelledError:
            await socket.close(CloseCode.GOING_AWAY, "server shutting down")  # the server is stopping
            raise
        finally:
            self.sockets.discard(socket)
            if socket._member is not None:
                socket._member.hub.discard(socket)  # no group keeps a closed socket
            if socket.connection_state is not ConnectionState.CLOSED:
                await socket.close()
            connection_logger.info(
                "websocket %s closed with %s after %.3fs (user %s)",
                escape_uri_path(socket.path),
                socket.close_code,
                time.monotonic() - started,
                user_id(socket),
            )

    async def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every open socket of this process (used at shutdown)."""
        for socket in list(self.sockets):
            await socket.close(code, reason)


async def close_for_exception(socket: WebSocket, exc: Exception) -> None:
    """Close ``socket`` as ``exc`` demands: nothing for ``Disconnected``, the
    message's code for ``InvalidMessage``, 1011 and a traceback for anything else.
    """
    if isinstance(exc, Disconnected):
        return  # the client left: the normal end of a connection
    if isinstance(exc, InvalidMessage):
        logger.warning("Closing websocket %s with %d: %s", escape_uri_path(socket.path), exc.code, exc)
        await socket.close(exc.code, str(exc))
        return
    logger.error(
        "Handler for websocket %s raised; closing with %d",
        escape_uri_path(socket.path),
        CloseCode.INTERNAL_ERROR,
        exc_info=exc,
    )
    sink = socket.scope.get("extensions", {}).get("tether.testing")
    if sink is not None:  # tether.testing re-raises it in the test
        sink["exceptions"].append(exc)
    await socket.close(CloseCode.INTERNAL_ERROR)
