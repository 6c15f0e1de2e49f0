"""Resolve a WebSocket scope to its route and serve the handler.

Resolution goes through Django's own resolver (so ``include()`` and
namespaces work) over the URLconf's websocket patterns only: an HTTP pattern
at the same path, earlier or not, never hides a websocket route. Each socket
gets its own ``ResolverMatch``. Serving plugs the session, user and groups
into the socket (``Services``), checks a bearer token before the handler runs
(refused with 4401), makes every socket whose session or token carries a user
a member of ``user_group(user)`` before its handshake is answered, registers
it with ``tether.revocation`` (closed when its login ends), and turns every
way a handler can end into a defined close (``tether.closing``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.urls import URLPattern, URLResolver, get_resolver, set_script_prefix
from django.urls.exceptions import Resolver404
from django.urls.resolvers import RegexPattern, ResolverMatch
from django.utils.encoding import escape_uri_path

from ._deadline import within
from ._types import Receive, Scope, Send, User
from .auth import (
    anonymous_user,
    aresolve_login,
    averify_token,
    bearer_token,
    cached_login,
    get_session,
    has_session_cookie,
    login_generation,
    remember_login,
    resolve_user,
    user_id,
)
from .backends.memory import MemoryBackend
from .closing import close_for_exception
from .codes import CloseCode
from .conf import get_setting
from .exceptions import Disconnected, InvalidState, InvalidToken
from .hub import discard, get_hub, groups_of, join_user_group, leave
from .limits import limit_receive
from .positions import JoinResult, Position
from .presence import discard as discard_presence
from .presence import track, track_user
from .presence import untrack as untrack_presence
from .revocation import track_session, track_token, untrack, watch_revocations
from .security import origin_refusal
from .urls import Handler, get_handler
from .websocket import ConnectionState, WebSocket

__all__ = ["SERVICES", "WebSocketRouter", "resolve_websocket"]

logger = logging.getLogger("tether.routing")
connection_logger = logging.getLogger("tether.connection")
security_logger = logging.getLogger("tether.security")
auth_logger = logging.getLogger("tether.auth")


class _Services:
    """The session, user and groups of a served socket (see ``tether.websocket.Services``)."""

    def session(self, socket: WebSocket) -> Any:
        return get_session(socket)

    async def user(self, socket: WebSocket) -> User:
        """The socket's user from its bearer token, else its session; registered for revocation.

        Raises ``InvalidToken`` for a token that can't be used (the router
        refuses the handshake). A session that logs out while being read
        counts as none (``AnonymousUser``).
        """
        token = bearer_token(socket)
        if token is None and not has_session_cookie(socket):
            return await resolve_user(socket)  # anonymous, without I/O
        started = asyncio.get_running_loop().time()
        await watch_revocations()  # first: a revocation published from now on reaches this process
        if token is not None:
            user, expires = await averify_token(token)
            why = track_token(socket, user, expires, started)
            if why is not None:
                raise InvalidToken(why)
            return cast(User, user)
        key = socket.cookies[settings.SESSION_COOKIE_NAME]
        ttl = await self.login_cache_ttl()
        hit = cached_login(key) if ttl else None
        generation = login_generation()
        if hit is not None:
            user, login_ref, digest = hit
        else:
            (user, login_ref), digest = await aresolve_login(socket), None
        if user.is_authenticated:
            why = track_session(socket, user, key, login_ref, started, digest)
            if why is not None:
                auth_logger.info(
                    "Websocket %s: the session of user %s ended while it connected (%s); treated as anonymous",
                    escape_uri_path(socket.path),
                    user.pk,
                    why,
                )
                return anonymous_user()
            if hit is None and ttl and socket.session.session_key == key:  # not cycled by get_user()
                remember_login(key, user, login_ref, ttl, generation)
        return user

    async def login_cache_ttl(self) -> float:
        """``TETHER["LOGIN_CACHE"]`` where it is safe, else 0: only with the memory backend.

        There every revocation is a signal in this process, which drops the entry before the
        logout or the save returns. With Redis or PostgreSQL a logout in another process reaches
        this one a moment later, and a handshake in that moment would be let in from the cache;
        so every handshake reads the session store there.
        """
        ttl = get_setting("LOGIN_CACHE")
        if not ttl or not isinstance((await get_hub()).backend, MemoryBackend):
            return 0.0
        return float(ttl)

    async def join(self, socket: WebSocket, group: str, since: Position | None = None) -> JoinResult:
        joined = await (await get_hub()).join(socket, group, since)
        await track(socket, group)  # a group with presence gets the socket's entry
        return joined

    async def leave(self, socket: WebSocket, group: str) -> None:
        await leave(socket, group)
        await untrack_presence(socket, group)

    def groups(self, socket: WebSocket) -> frozenset[str]:
        return groups_of(socket)

    async def before_accept(self, socket: WebSocket) -> None:
        """ "Every authenticated socket is in ``user_group(user)``": made true before the accept goes out."""
        user = socket.resolved_user
        if user is None and has_session_cookie(socket):
            user = await socket.auser()
        if user is not None:
            await join_user_group(socket, user)
            await track_user(socket, user)  # user_connected, if it has receivers


SERVICES = _Services()
"""The services every socket served by tether gets; pass to ``WebSocket(..., services=SERVICES)`` in tests."""


def _path_info(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _websocket_patterns(patterns: Sequence[Any]) -> list[URLPattern | URLResolver]:
    """``patterns`` with only websocket routes left (includes kept, with their namespaces, if non-empty)."""
    kept: list[URLPattern | URLResolver] = []
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = _websocket_patterns(entry.url_patterns)
            if inner:
                kept.append(URLResolver(entry.pattern, inner, entry.default_kwargs, entry.app_name, entry.namespace))
        elif isinstance(entry, URLPattern) and get_handler(entry.callback) is not None:
            kept.append(entry)
    return kept


@functools.lru_cache(maxsize=8)
def _websocket_resolver(urlconf: str | None) -> URLResolver:
    """A resolver over the URLconf's websocket routes only, built from Django's own classes."""
    full = get_resolver(urlconf)
    return URLResolver(RegexPattern(r"^/"), _websocket_patterns(full.url_patterns))


@functools.lru_cache(maxsize=1024)
def _resolve(urlconf: str | None, path: str) -> tuple[ResolverMatch | None, str]:
    try:
        return _websocket_resolver(urlconf).resolve(path), ""
    except Resolver404:
        pass
    try:
        match = get_resolver(urlconf).resolve(path)
    except Resolver404:
        return None, "no URL pattern matches"
    return None, f"it resolves to the HTTP view {match._func_path}, not a websocket() route"


def _own_match(match: ResolverMatch) -> ResolverMatch:
    """A copy of a cached match for one socket: its dicts are its own to change."""
    mine = ResolverMatch.__new__(ResolverMatch)  # copy.copy() refuses: ResolverMatch forbids pickling
    mine.__dict__.update(match.__dict__)
    mine.kwargs = dict(match.kwargs)
    for name in ("captured_kwargs", "extra_kwargs"):  # Django >= 4.1; not in the stubs
        setattr(mine, name, dict(getattr(match, name, None) or {}))
    return mine


def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in ("ROOT_URLCONF", "TETHER"):
        _resolve.cache_clear()
        _websocket_resolver.cache_clear()


setting_changed.connect(_clear_cache)


def resolve_websocket(path: str) -> ResolverMatch | None:
    """The match for a websocket route at ``path``, or None (a fresh match per call)."""
    match = _resolve(get_setting("URLCONF"), path)[0]
    return _own_match(match) if match is not None else None


class WebSocketRouter:
    """The ASGI application for ``websocket`` scopes; keeps the set of open sockets."""

    def __init__(self) -> None:
        self.sockets: set[WebSocket] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = limit_receive(receive)  # the limits' settings, read once per connection
        socket = WebSocket(scope, limited or receive, send, services=SERVICES)
        if limited is not None:
            limited.socket = socket
        socket.max_message_size = get_setting("MAX_MESSAGE_SIZE")
        handshake_timeout = get_setting("HANDSHAKE_TIMEOUT")
        try:
            if handshake_timeout is None:
                await socket.receive_connect()
            else:
                await within(socket.receive_connect(), handshake_timeout)
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
            await socket.deny(CloseCode.NOT_FOUND, "no such websocket route")
            return
        socket.resolver_match = _own_match(match)
        refusal = origin_refusal(socket)
        if refusal is not None:
            security_logger.warning(
                "Refused websocket %s: %s (closed %d)", escape_uri_path(path), refusal, CloseCode.FORBIDDEN
            )
            await socket.deny(CloseCode.FORBIDDEN, "origin not allowed")
            return
        if not await self.authenticate(socket):
            return
        handler = get_handler(match.func)
        assert handler is not None
        try:
            await self.serve(socket, handler)
        finally:
            if limited is not None:
                limited.stop()

    async def authenticate(self, socket: WebSocket) -> bool:
        """Check a bearer token before the handler runs; refuse the handshake (4401) if it can't be used."""
        try:
            if bearer_token(socket) is None:
                return True
            await socket.auser()
        except InvalidToken as exc:
            auth_logger.warning(
                "Refused websocket %s: invalid token: %s (closed %d)",
                escape_uri_path(socket.path),
                exc.reason,
                CloseCode.UNAUTHORIZED,
            )
            await socket.deny(CloseCode.UNAUTHORIZED, "invalid token")
            return False
        return True

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
            await socket.terminate(CloseCode.GOING_AWAY, "server shutting down")  # the server is stopping
            raise
        finally:
            self.sockets.discard(socket)
            discard(socket)  # no group keeps a closed socket
            discard_presence(socket)  # nor any presence list
            untrack(socket)
            if socket.connection_state is not ConnectionState.CLOSED:
                await socket.close()
            if connection_logger.isEnabledFor(logging.INFO):  # the arguments cost more than the check
                connection_logger.info(
                    "websocket %s closed with %s after %.3fs (user %s)",
                    escape_uri_path(socket.path),
                    socket.close_code,
                    time.monotonic() - started,
                    user_id(socket),
                )

    async def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Close every open socket of this process at once (shutdown); each close is bounded."""
        await asyncio.gather(*(socket.terminate(code, reason) for socket in list(self.sockets)))
