"""Django sessions, users and bearer tokens on sockets.

``socket.session`` is the session named by the handshake's session cookie
(any ``SESSION_ENGINE``); ``await socket.auser()`` resolves the user through
Django's own ``aget_user`` (so the session's auth hash is verified: a session
invalidated by a password change has no user), once per connection. Nothing
touches the session store until someone asks. Joining ``user_group(user)`` is
not done here but where the socket is served (``tether.routing``).

Clients without cookies (mobile apps, CLIs, a page on another origin) present
a token from ``issue_token(user)`` instead: ``Authorization: Bearer <token>``,
or, from a browser (which can't set headers), an offered subprotocol
``bearer.<token>`` next to a real one. A token is signed with ``SECRET_KEY``
(``django.core.signing``), names the user's primary key, expires, and carries
an HMAC keyed by the user's session auth hash, so changing the password voids
every token issued before. Tokens are never read from the query string (URLs
end up in access logs) and never logged.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from importlib import import_module
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.core import signing
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.signals import setting_changed
from django.db.models import Model
from django.db.models.base import ModelState
from django.http import HttpRequest, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache

from ._logins import get_user
from ._types import User
from .conf import get_setting
from .exceptions import InvalidToken
from .websocket import TOKEN_SUBPROTOCOL_PREFIX, WebSocket, scope_header

if TYPE_CHECKING:
    from django.contrib.sessions.backends.base import SessionBase

__all__ = [
    "LOGIN_KEY",
    "User",
    "acheck_credentials",
    "acheck_session",
    "anonymous_user",
    "aresolve_login",
    "averify_token",
    "bearer_token",
    "cached_login",
    "credential_digest",
    "forget_logins",
    "get_session",
    "has_session_cookie",
    "issue_token",
    "login_generation",
    "remember_login",
    "resolve_user",
    "session_ref",
    "token_view",
    "user_id",
]

LOGIN_KEY = "_tether_login"
"""The session key under which tether keeps a random id of the login (written at ``user_logged_in``).

Django's ``update_session_auth_hash()`` gives the session a new key but keeps
its data, so this id still names the login afterwards (``tether.revocation``).
"""

_TOKEN_SALT = "tether.auth.token"
_DIGEST_MESSAGE = b"tether.auth.credentials"


def get_session(socket: WebSocket) -> SessionBase:
    """The session store for the handshake's session cookie (an empty one without it).

    Building it does no I/O: the store loads on first access, so read it with
    the async accessors (``await socket.session.aget("key")``) in handlers.
    """
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(socket.cookies.get(settings.SESSION_COOKIE_NAME))
    return store


def anonymous_user() -> User:
    """A fresh ``AnonymousUser``."""
    from django.contrib.auth.models import AnonymousUser  # needs the app registry: not at import time

    return AnonymousUser()


def has_session_cookie(socket: WebSocket) -> bool:
    """Whether the handshake carried a session cookie (no I/O): only then can there be a user.

    A handshake with no ``Cookie`` header at all (scripts, apps, every anonymous
    socket without cookies) is answered from the scope, without building
    ``socket.headers`` and ``socket.cookies`` (both kept for the connection's life).
    """
    if scope_header(socket.scope, b"cookie") is None:
        return False
    return bool(socket.cookies.get(settings.SESSION_COOKIE_NAME))


async def resolve_user(socket: WebSocket) -> User:
    """The socket's user by ``django.contrib.auth.get_user`` (``AnonymousUser`` without a valid session).

    One hop to Django's sync thread for the session and the user together
    (``aget_user`` makes two). Like Django, it flushes a session whose auth
    hash no longer matches.
    """
    return (await aresolve_login(socket))[0]


def _login_of(socket: WebSocket) -> tuple[User, str | None]:
    user = cast(User, get_user(socket))  # Django's get_user, by SQL compiled once where it can (tether._logins)
    return user, (socket.session.get(LOGIN_KEY) if user.is_authenticated else None)


_resolve_login = sync_to_async(_login_of)  # thread-sensitive, like every ORM call Django makes


async def aresolve_login(socket: WebSocket) -> tuple[User, str | None]:
    """``(user, login id)`` from the handshake's session: Django's ``get_user`` and the session's
    tether login id (``LOGIN_KEY``, None if anonymous), read in one hop to the sync thread.
    Reads the session store and the user every time (no cache)."""
    return await _resolve_login(socket)


# -- the login cache: a validated session reused by the next handshakes of this process -----------
#
# session ref -> (user, login id, expires at, generation). Only the router uses it, and only where
# every revocation reaches this process as it happens (tether.routing decides). An entry is dropped
# by the receivers of logout, login, password change, deactivation and deletion (tether.revocation,
# synchronously, in the thread that sends the signal) and by every revocation message; and it
# expires after ``TETHER["LOGIN_CACHE"]`` seconds, which bounds what no signal announces (a
# session row deleted by hand, ``QuerySet.update(password=...)``). ``_generation`` counts the drops:
# a login read while one happened is not remembered (it may predate the drop).


class _Entry:
    __slots__ = ("digest", "expires", "login_ref", "user", "user_pk")

    def __init__(self, user: User, login_ref: str | None, expires: float) -> None:
        self.user, self.login_ref, self.expires, self.user_pk = user, login_ref, expires, str(user.pk)
        self.digest = credential_digest(user)


def _own_copy(user: User) -> User:
    """A user instance of its own, as a fresh read gives (a handler may change and save it)."""
    if not isinstance(user, Model):
        return copy.copy(user)
    clone = user.__class__.__new__(user.__class__)
    clone.__dict__.update(user.__dict__)
    clone._state = ModelState()  # no cached relations: they load again, like on a fresh instance
    clone._state.db, clone._state.adding = user._state.db, False
    return cast(User, clone)


_cache: dict[str, _Entry] = {}
_cache_lock = threading.Lock()  # receivers run in request threads; the router on the event loop
_generation = 0
_CACHE_SIZE = 10_000  # sessions; the oldest half goes when full


def login_generation() -> int:
    """A number that changes whenever a cached login is dropped; read it before reading a login."""
    return _generation


def cached_login(session_key: str) -> tuple[User, str | None, str] | None:
    """``(a copy of the user, login id, credential_digest(user))`` for a session validated in the
    last ``LOGIN_CACHE`` seconds and not revoked since, else None. No I/O."""
    ref = session_ref(session_key)
    entry = _cache.get(ref)
    if entry is None:
        return None
    if entry.expires <= time.monotonic():
        with _cache_lock:
            if _cache.get(ref) is entry:
                del _cache[ref]
        return None
    return _own_copy(entry.user), entry.login_ref, entry.digest


def remember_login(session_key: str, user: User, login_ref: str | None, ttl: float, generation: int) -> bool:
    """Cache a login read from the session store for ``ttl`` seconds, unless a drop happened since
    ``generation`` (then it may be stale). Returns whether it was cached."""
    if ttl <= 0 or not user.is_authenticated:
        return False
    ref = session_ref(session_key)
    entry = _Entry(_own_copy(user), login_ref, time.monotonic() + ttl)
    with _cache_lock:
        if _generation != generation:
            return False
        if len(_cache) >= _CACHE_SIZE:
            for stale in sorted(_cache, key=lambda r: _cache[r].expires)[: _CACHE_SIZE // 2]:
                del _cache[stale]
        _cache[ref] = entry
    return True


def forget_logins(*, session_refs: Iterable[str] = (), user_pk: str | None = None, everything: bool = False) -> None:
    """Drop cached logins: those of ``session_refs``, of user ``user_pk``, or all. Thread-safe,
    idempotent; every call also voids logins being read (``login_generation``)."""
    global _generation
    with _cache_lock:
        _generation += 1
        if everything:
            _cache.clear()
            return
        for ref in session_refs:
            _cache.pop(ref, None)
        if user_pk is not None:
            for ref in [r for r, e in _cache.items() if e.user_pk == user_pk]:
                del _cache[ref]


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("TETHER", "SESSION_ENGINE", "AUTHENTICATION_BACKENDS", "AUTH_USER_MODEL", "SECRET_KEY"):
        forget_logins(everything=True)


setting_changed.connect(_settings_changed)


def user_id(socket: WebSocket) -> str:
    """The user for log lines: the primary key, ``anonymous``, or ``-`` if never resolved (no I/O)."""
    user = socket.resolved_user
    if user is None:
        return "-"
    return str(user.pk) if user.is_authenticated else "anonymous"


# -- references that name a session or a login without revealing it ---------------


def session_ref(session_key: str) -> str:
    """A one-way name for a session key (it is a credential), safe to publish to other processes."""
    return hashlib.sha256(session_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _digest(auth_hash: str) -> str:
    return hmac.new(auth_hash.encode(), _DIGEST_MESSAGE, hashlib.sha256).hexdigest()[:32]


def credential_digest(user: Any) -> str:
    """An HMAC keyed by ``user``'s session auth hash: changes when the password does (no I/O).

    The hash itself never leaves the process: tokens and revocation messages carry this.
    """
    get_hash = getattr(user, "get_session_auth_hash", None)  # a custom user without one has no password to void
    return _digest(get_hash()) if get_hash is not None else ""


def _digest_matches(user: Any, digest: str) -> bool:
    if constant_time_compare(credential_digest(user), digest):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)  # SECRET_KEY_FALLBACKS
    return fallbacks is not None and any(constant_time_compare(_digest(h), digest) for h in fallbacks())


# -- tokens ---------------------------------------------------------------------


def _signer() -> signing.Signer:
    # "." keeps the token a valid Sec-WebSocket-Protocol token (no ":"); payload and
    # signature are base64url without padding.
    return signing.Signer(salt=_TOKEN_SALT, sep=".")


def issue_token(user: Any, max_age: float | timedelta | None = None) -> str:
    """A signed token that authenticates ``user`` at a WebSocket handshake for ``max_age`` seconds.

    ``max_age`` defaults to ``TETHER["TOKEN_MAX_AGE"]``. The token names the
    user's primary key and is voided by a password change (it carries an HMAC
    keyed by the session auth hash), by deactivating or deleting the user, and
    by rotating ``SECRET_KEY`` out of ``SECRET_KEY_FALLBACKS``. It uses only
    base64url characters and ".", so it fits in a subprotocol entry. No I/O.
    Raises ``ValueError`` for an anonymous user or a non-positive ``max_age``.
    """
    if not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        raise ValueError("issue_token() needs an authenticated user")
    age = get_setting("TOKEN_MAX_AGE") if max_age is None else max_age
    seconds = age.total_seconds() if isinstance(age, timedelta) else float(age)
    if seconds <= 0:
        raise ValueError(f"a token's max_age must be positive, got {age!r}")
    payload = {"u": str(user.pk), "h": credential_digest(user), "e": math.ceil(time.time() + seconds)}
    return _signer().sign_object(payload)


@never_cache
async def token_view(request: HttpRequest) -> JsonResponse:
    """``{"token": ..., "max_age": seconds}`` for the signed-in user; 401 ``{"error": ...}`` when anonymous.

    For a page that connects with the subprotocol form. Route it in your
    URLconf: ``path("tether/token/", token_view, name="tether-token")``. A GET
    changes nothing and its answer can't be read cross-origin, so it needs no
    CSRF token; it is never cached.
    """
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    max_age = float(get_setting("TOKEN_MAX_AGE"))
    return JsonResponse({"token": issue_token(user, max_age), "max_age": max_age})


def bearer_token(socket: WebSocket) -> str | None:
    """The token the handshake presents (``Authorization: Bearer`` or a ``bearer.`` subprotocol), or None.

    No I/O; never reads the query string. Raises ``InvalidToken`` when more
    than one is presented.
    """
    found: list[str] = []
    for name, value in socket.scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                found.append(credentials.strip())
    for offered in socket.scope.get("subprotocols", ()):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            found.append(offered[len(TOKEN_SUBPROTOCOL_PREFIX) :])
    if len(found) > 1:
        raise InvalidToken("more than one token presented")
    return found[0] if found else None


async def _user_by_pk(pk: str) -> Any:
    """The user with primary key ``pk`` (as a token or a revocation message names it), or None."""
    model = get_user_model()
    try:
        return await model._default_manager.aget(pk=model._meta.pk.to_python(pk))
    except (ObjectDoesNotExist, ValidationError, ValueError, TypeError):
        return None


async def acheck_credentials(user_pk: str, digest: str) -> tuple[Any, str | None]:
    """``(user, None)`` if the user exists, is active and still has the credentials ``digest`` names,
    else ``(user or None, why not)``. One database query."""
    user = await _user_by_pk(user_pk)
    if user is None:
        return None, "user deleted"
    if not getattr(user, "is_active", True):
        return user, "user deactivated"
    if not _digest_matches(user, digest):
        return user, "password changed"
    return user, None


async def averify_token(token: str) -> tuple[Any, float]:
    """The user a token authenticates and when it expires (a Unix time).

    Raises ``InvalidToken`` saying why not: "bad signature" (tampered, or
    signed with another ``SECRET_KEY``), "malformed", "expired", "user
    deleted", "user deactivated", "password changed". One database query.
    """
    try:
        payload = _signer().unsign_object(token)
    except signing.BadSignature:
        raise InvalidToken("bad signature") from None
    except (ValueError, json.JSONDecodeError):  # signed but not our JSON: can't happen without the key
        raise InvalidToken("malformed") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("u"), str)
        or not isinstance(payload.get("h"), str)
        or not isinstance(payload.get("e"), int)
    ):
        raise InvalidToken("malformed")
    expires = float(payload["e"])
    if expires <= time.time():
        raise InvalidToken("expired")
    user, why = await acheck_credentials(payload["u"], payload["h"])
    if why is not None:
        raise InvalidToken(why)
    return user, expires


async def acheck_session(session_key: str, user_pk: str) -> str | None:
    """Why the session ``session_key`` no longer signs in user ``user_pk``, or None if it still does.

    Django's own rules, read-only (unlike ``aget_user`` it never flushes or
    cycles the session): the session exists and hasn't expired, names that
    user and an installed backend, the backend still returns the user (an
    inactive one it refuses), and its auth hash matches. A session read and a
    user read.
    """
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(session_key)
    stored_pk = await store.aget(SESSION_KEY)
    if stored_pk is None:
        return "session ended"
    if str(stored_pk) != user_pk:
        return "session now holds another user"
    backend_path = await store.aget(BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return "session's authentication backend removed"
    model = get_user_model()
    try:
        user = await load_backend(str(backend_path)).aget_user(model._meta.pk.to_python(stored_pk))
    except (ValidationError, ValueError, TypeError):
        user = None
    if user is None:
        return "user deactivated or deleted"
    if hasattr(user, "get_session_auth_hash"):
        stored_hash = await store.aget(HASH_SESSION_KEY) or ""
        current = user.get_session_auth_hash()
        fallbacks = getattr(user, "get_session_auth_fallback_hash", lambda: ())
        if not stored_hash or not (
            constant_time_compare(stored_hash, current)
            or any(constant_time_compare(stored_hash, h) for h in fallbacks())
        ):
            return "password changed"
    return None
