"""Sockets closed when the login behind them ends: logout, password change, deactivation, expiry.

A socket outlives the HTTP session it started with. This module keeps, per
process, which open sockets stand on which login (a session, or a token's
user and credentials), and closes them with 4401 ("sign in again") when:

- the session logs out (``user_logged_out``, sync or async): that session's
  sockets, in every process;
- the user's password changes (``set_password()`` then ``save()``), or the
  user is deactivated or deleted: all of that user's sockets in every process,
  except, for a password change, those of the session whose request saved the
  new password (the one ``update_session_auth_hash()`` keeps signed in);
- a re-check finds the login gone (session expired or deleted, password
  changed behind the ORM's back): every ``TETHER["SESSION_RECHECK"]`` seconds,
  and now with ``close_user_sockets(user)``;
- a token socket's token expires.

Revocations travel as signed messages on one process-wide group
(``CONTROL_GROUP``, watched by the hub: no extra group per socket), applied in
the publishing process at once and in the others when the backend delivers
them. A publish that fails is logged, never raised into a logout; the periodic
re-check is the safety net. Every close has a log line on ``tether.auth``.

**The password-change exemption.** Django has no password-change signal and
``update_session_auth_hash()`` gives the changing session a new key (the old
one is deleted), so tether pins the exemption at the only moment it can: when
the user is saved with a new password, the session cookie of the request
doing it (recorded at ``request_started``, per request thread) names the
session to keep. Its sockets are kept and re-bound to the new credentials
(like a token socket: checked against the user's new password and ``is_active``
from then on, closed on its logout by the login id tether writes into the
session at ``user_logged_in``, which survives the key change). A session
without that id (logged in before tether was installed) can't be followed
across its key change and is closed like the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial, wraps
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model, user_logged_in, user_logged_out
from django.core import signing
from django.core.signals import request_finished, request_started
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.http.cookie import parse_cookie
from django.utils.encoding import escape_uri_path

from ._types import Frame
from .auth import LOGIN_KEY, acheck_credentials, acheck_session, credential_digest, forget_logins, session_ref
from .codes import CloseCode
from .conf import get_setting
from .hub import get_hub
from .publish import broadcast, broadcast_sync
from .websocket import WebSocket, scope_header

__all__ = [
    "CONTROL_GROUP",
    "REASON",
    "aclose_user_sockets",
    "close_user_sockets",
    "connect_signals",
    "track_session",
    "track_token",
    "untrack",
    "watch_revocations",
]

logger = logging.getLogger("tether.auth")

CONTROL_GROUP = "tether.revocation"
"""The group revocation messages travel on; every process with authenticated sockets watches it."""

REASON = "sign in again"
"""The close reason of every revocation (code 4401); the log line says what ended the login."""

_SALT = "tether.revocation"
_MEMORY = 120.0  # seconds a revocation is remembered, for handshakes that read the login before it


class _Login:
    """Sockets of this process that stand or fall together: one session, or one user's credentials."""

    __slots__ = (
        "credentials",
        "digest",
        "due",
        "forgotten",
        "key",
        "login_ref",
        "session_key",
        "session_ref",
        "sockets",
        "user_pk",
    )

    def __init__(self, user_pk: str) -> None:
        self.user_pk = user_pk
        self.key: tuple[str, ...] = ()  # its key in the registry
        self.session_key: str | None = None  # set for a session login: what the re-check reads
        self.session_ref: str | None = None
        self.login_ref: str | None = None  # the login id in the session (LOGIN_KEY), if it has one
        self.credentials = False  # checked against the user's credentials instead of a session
        self.digest = ""  # credential_digest(user) the login stands on (what a re-check uses if ``credentials``)
        self.sockets: set[WebSocket] = set()
        self.due = 0.0
        self.forgotten = False

    def refs(self) -> Iterable[str]:
        return [ref for ref in (self.session_ref, self.login_ref) if ref]


class _Registry:
    """This event loop's logins, their re-check schedule, and recent revocations."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.logins: dict[tuple[str, ...], _Login] = {}
        self.of_socket: dict[WebSocket, _Login] = {}
        self.by_user: dict[str, set[_Login]] = {}
        self.by_ref: dict[str, set[_Login]] = {}  # session refs and login ids -> logins
        self.timers: dict[WebSocket, asyncio.TimerHandle] = {}  # token expiries
        self.ended: dict[str, float] = {}  # session refs / login ids logged out -> when (loop time)
        self.changed: dict[str, tuple[float, dict[str, Any]]] = {}  # user pk -> (when, last "user" message)
        self.seen: dict[str, float] = {}  # message ids applied (each arrives twice in its own process)
        self.heap: list[tuple[float, int, _Login]] = []
        self.counter = itertools.count()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- membership ------------------------------------------------------------

    def add(self, key: tuple[str, ...], login: _Login, socket: WebSocket) -> None:
        existing = self.logins.get(key)
        if existing is None:
            login.key = key
            self.logins[key] = login
            self.by_user.setdefault(login.user_pk, set()).add(login)
            for ref in login.refs():
                self.by_ref.setdefault(ref, set()).add(login)
            self.schedule(login)
        else:
            login = existing
        login.sockets.add(socket)
        self.of_socket[socket] = login

    def remove(self, socket: WebSocket) -> None:
        timer = self.timers.pop(socket, None)
        if timer is not None:
            timer.cancel()
        login = self.of_socket.pop(socket, None)
        if login is not None:
            login.sockets.discard(socket)
            if not login.sockets:
                self.forget(login)

    def forget(self, login: _Login) -> None:
        if login.forgotten:
            return
        login.forgotten = True
        if self.logins.get(login.key) is login:
            del self.logins[login.key]
        for index, name in ((self.by_user, login.user_pk), *((self.by_ref, ref) for ref in login.refs())):
            logins = index.get(name)
            if logins is not None:
                logins.discard(login)
                if not logins:
                    del index[name]
        if not self.logins:
            self.wake.set()  # the re-check task ends
        elif len(self.heap) > 64 and len(self.heap) > 4 * len(self.logins):  # churn: drop the forgotten
            self.heap = [entry for entry in self.heap if not entry[2].forgotten]
            heapq.heapify(self.heap)

    # -- revoking --------------------------------------------------------------

    def revoke(self, login: _Login, why: str) -> None:
        self.forget(login)
        for socket in list(login.sockets):
            self.close(socket, why, login.user_pk)
        login.sockets.clear()

    def close(self, socket: WebSocket, why: str, user_pk: str) -> None:
        self.of_socket.pop(socket, None)
        timer = self.timers.pop(socket, None)
        if timer is not None:
            timer.cancel()
        logger.info(
            "Closing websocket %s for user %s: %s (closed %d)",
            escape_uri_path(socket.path),
            user_pk,
            why,
            CloseCode.UNAUTHORIZED,
        )
        self.spawn(socket.terminate(CloseCode.UNAUTHORIZED, REASON))

    def expire(self, socket: WebSocket) -> None:
        """A token socket's token expired."""
        self.timers.pop(socket, None)
        login = self.of_socket.get(socket)
        if login is None:
            return
        self.remove(socket)
        self.close(socket, "token expired", login.user_pk)

    def decide(self, login: _Login, message: dict[str, Any]) -> str | None:
        """Why a "user" revocation ends ``login``, or None if it stands (re-bound if exempt)."""
        reason = str(message.get("r") or "revoked")
        if message.get("f"):
            return reason
        digest = message.get("d")
        if digest and login.digest == digest:
            return None  # already on the new credentials (signed in since, a token issued since, exempted)
        if not digest or message.get("r") != "password changed":
            return reason
        if not login.credentials and login.session_ref is not None and login.session_ref == message.get("x"):
            if login.login_ref:
                login.credentials, login.digest = True, str(digest)
                logger.info(
                    "Keeping %d websocket(s) of user %s open: their session changed the password",
                    len(login.sockets),
                    login.user_pk,
                )
                return None
            return "password changed (its session has no tether login id to follow across the key change)"
        return reason

    def apply(self, message: dict[str, Any]) -> None:
        """Apply one revocation message in this process (idempotent by message id)."""
        now = self.loop.time()
        ident = str(message.get("i", ""))
        if ident:
            if ident in self.seen:
                return
            self.seen[ident] = now
        self.prune(now)
        kind = message.get("k")
        pk = str(message.get("u", ""))
        if kind in ("logout", "user", "recheck"):  # the next handshake reads the store again
            forget_logins(session_refs=[str(message["s"])] if message.get("s") else (), user_pk=pk or None)
        if kind == "logout":
            logins: set[_Login] = set()
            for ref in (message.get("s"), message.get("l")):
                if ref:
                    self.ended[str(ref)] = now
                    logins |= self.by_ref.get(str(ref), set())
            for login in logins:
                self.revoke(login, "logged out")
        elif kind == "user":
            self.changed[pk] = (now, message)
            for login in list(self.by_user.get(pk, ())):
                why = self.decide(login, message)
                if why is not None:
                    self.revoke(login, why)
            exempt = message.get("x")
            for login in list(self.by_ref.get(str(exempt), ())) if exempt else ():
                if login.user_pk != pk and not login.credentials and login.login_ref:
                    # Someone else's password was changed from this session (an admin's form):
                    # update_session_auth_hash() gives it a new key too, so follow it by its login id.
                    login.credentials = True
                    logger.info(
                        "Websocket(s) of user %s: their session changed another user's password; "
                        "now checked against their own credentials",
                        login.user_pk,
                    )
        elif kind == "recheck":
            for login in list(self.by_user.get(pk, ())):
                self.spawn(self.check(login))
        else:
            logger.warning("Ignored a revocation message of unknown kind %r", kind)

    def prune(self, now: float) -> None:
        for memory in (self.ended, self.seen):
            for key in [k for k, when in memory.items() if now - when > _MEMORY]:
                del memory[key]
        for key in [k for k, (when, _) in self.changed.items() if now - when > _MEMORY]:
            del self.changed[key]

    def ended_meanwhile(self, login: _Login, started: float) -> str | None:
        """Why ``login``, read at ``started`` (loop time), was revoked before it got here, or None."""
        for ref in login.refs():
            if ref in self.ended:
                return "logged out"
        change = self.changed.get(login.user_pk)
        if change is not None and change[0] >= started:
            return self.decide(login, change[1])
        return None

    # -- re-checking -----------------------------------------------------------

    def schedule(self, login: _Login) -> None:
        period = get_setting("SESSION_RECHECK")
        if period is None:
            return
        login.due = self.loop.time() + float(period) * random.uniform(0.5, 1.0)  # spread a reconnect wave
        heapq.heappush(self.heap, (login.due, next(self.counter), login))
        if self.task is None or self.task.done():
            # a context of its own: not the ThreadSensitiveContext of the request that got here first
            self.task = contextvars.Context().run(self.loop.create_task, self.run(), name="tether-session-recheck")
        elif self.heap[0][2] is login:
            self.wake.set()  # due before what the task sleeps for

    async def run(self) -> None:
        """Re-check each login when due, one at a time, until none is left."""
        while self.logins and self.heap:
            due, _, login = self.heap[0]
            delay = due - self.loop.time()
            if delay > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            heapq.heappop(self.heap)
            if login.forgotten or login.due != due:
                continue
            await self.check(login)
            period = get_setting("SESSION_RECHECK")
            if not login.forgotten and period is not None:
                login.due = self.loop.time() + float(period)
                heapq.heappush(self.heap, (login.due, next(self.counter), login))
        self.heap.clear()

    async def check(self, login: _Login) -> None:
        """Re-check one login now; revoke it if it ended. A failed check keeps it (and says so)."""
        if login.forgotten:
            return
        credentials = login.credentials
        try:
            if credentials:
                _, why = await acheck_credentials(login.user_pk, login.digest)
            else:
                assert login.session_key is not None
                why = await acheck_session(login.session_key, login.user_pk)
        except Exception as exc:
            logger.warning(
                "Could not re-check the login of %d websocket(s) of user %s (%r); kept open until the next re-check",
                len(login.sockets),
                login.user_pk,
                exc,
            )
            return
        if why is not None and not login.forgotten and login.credentials == credentials:
            self.revoke(login, why)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("tether revocation task failed", exc_info=task.exception())


_registry: _Registry | None = None


def _here() -> _Registry:
    """The registry of the running loop (a new one when the loop changed, as between tests)."""
    global _registry
    loop = asyncio.get_running_loop()
    if _registry is None or _registry.loop is not loop:
        _registry = _Registry(loop)
    return _registry


def _on_frame(group: str, frame: Frame) -> None:
    """The hub's watcher of ``CONTROL_GROUP``."""
    try:
        message = signing.loads(frame if isinstance(frame, str) else frame.decode(), salt=_SALT)
    except (signing.BadSignature, UnicodeDecodeError, ValueError):
        logger.warning("Ignored a message on %s without a valid signature (only tether publishes there)", group)
        return
    if isinstance(message, dict):
        _here().apply(message)


async def watch_revocations() -> None:
    """Make sure this process receives revocation messages (one subscription per process).

    Call before reading a login, so that a revocation published from then on is not missed.
    """
    await (await get_hub()).watch(CONTROL_GROUP, _on_frame)


# -- the sockets, as the router serves them -----------------------------------------


def track_session(
    socket: WebSocket, user: Any, session_key: str, login_ref: str | None, started: float, digest: str | None = None
) -> str | None:
    """Register a socket whose session signs in ``user``; ``started``: ``loop.time()`` before the read;
    ``digest``: ``credential_digest(user)`` if known (computed otherwise).

    Returns why that login ended while it was being read (the socket then is
    not registered and should be treated as anonymous), else None.
    """
    registry = _here()
    login = _Login(str(user.pk))
    login.session_key, login.session_ref = session_key, session_ref(session_key)
    login.login_ref = str(login_ref) if login_ref else None
    login.digest = credential_digest(user) if digest is None else digest  # what it stands on if its key changes
    why = registry.ended_meanwhile(login, started)
    if why is not None:
        return why
    registry.add(("session", login.session_ref), login, socket)
    return None


def track_token(socket: WebSocket, user: Any, expires: float, started: float) -> str | None:
    """Register a socket a token signed in; it closes when the token expires (a Unix time).

    Returns why the login ended while the token was being checked, else None.
    """
    registry = _here()
    login = _Login(str(user.pk))
    login.credentials, login.digest = True, credential_digest(user)
    why = registry.ended_meanwhile(login, started)
    if why is not None:
        return why
    registry.add(("credentials", login.user_pk, login.digest), login, socket)
    registry.timers[socket] = registry.loop.call_later(max(0.0, expires - time.time()), registry.expire, socket)
    return None


def untrack(socket: WebSocket) -> None:
    """Forget ``socket`` (it closed). Idempotent; no I/O."""
    registry = _registry
    if registry is not None and socket in registry.of_socket:
        registry.remove(socket)


# -- publishing revocations -----------------------------------------------------------


def _new(kind: str, **fields: Any) -> dict[str, Any]:
    return {"k": kind, "i": secrets.token_hex(8), **{k: v for k, v in fields.items() if v is not None}}


def _apply_here(message: dict[str, Any]) -> None:
    """Apply ``message`` to this process's sockets now, from any thread (no broker needed)."""
    registry = _registry
    if registry is None or registry.loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    # A context of its own: re-checks it starts must not run their ORM queries in the thread of the
    # request publishing (asgiref's thread-sensitive executor of that request, blocked on the publish).
    if running is registry.loop:
        contextvars.Context().run(registry.apply, message)
    elif registry.loop.is_running():
        registry.loop.call_soon_threadsafe(registry.apply, message, context=contextvars.Context())


def _publish(message: dict[str, Any], what: str, *, raise_errors: bool = False) -> None:
    """Apply ``message`` here and send it to every process; a failure is logged (or raised)."""
    _apply_here(message)
    frame = signing.dumps(message, salt=_SALT)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:  # on an event loop's thread: don't block it
        task = loop.create_task(_apublish(frame, what))
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        return
    try:
        broadcast_sync(CONTROL_GROUP, frame)
    except Exception as exc:
        if raise_errors:
            raise
        _log_failure(what, exc)


_pending: set[asyncio.Task[None]] = set()


async def _apublish(frame: str, what: str) -> None:
    try:
        await broadcast(CONTROL_GROUP, frame)
    except Exception as exc:
        _log_failure(what, exc)


def _log_failure(what: str, exc: BaseException) -> None:
    logger.error(
        "Could not tell the other processes about %s (%r): their sockets close at their next re-check "
        "(TETHER['SESSION_RECHECK']=%s)",
        what,
        exc,
        get_setting("SESSION_RECHECK"),
    )


def close_user_sockets(user: Any, *, force: bool = False) -> None:
    """Re-check every socket of ``user`` now, in every process, closing those whose login ended
    (session logged out, expired or deleted, password changed, user deactivated) with 4401.

    ``force=True`` closes all of them, whatever their login. For views (say,
    after deleting a user's other sessions); ``aclose_user_sockets`` in async
    code. Returns once the backend took the message; raises
    ``BackendUnavailable`` when it can't (this process's sockets are handled
    anyway).
    """
    _publish(_user_message(user, force), f"closing the sockets of user {user.pk}", raise_errors=True)


async def aclose_user_sockets(user: Any, *, force: bool = False) -> None:
    """``close_user_sockets()`` for async code."""
    message = _user_message(user, force)
    _apply_here(message)
    await broadcast(CONTROL_GROUP, signing.dumps(message, salt=_SALT))


def _user_message(user: Any, force: bool) -> dict[str, Any]:
    pk = str(getattr(user, "pk", user))
    return _new("user", u=pk, r="closed by the application", f=1) if force else _new("recheck", u=pk)


# -- signals --------------------------------------------------------------------------

_request = threading.local()  # the session ref of the request this thread runs, if any

_F = TypeVar("_F", bound=Callable[..., None])


def _never_raises(receiver: _F) -> _F:
    """A receiver's own failure is logged, never raised into the login, logout or save that sent it."""

    @wraps(receiver)
    def safe(*args: Any, **kwargs: Any) -> None:
        try:
            receiver(*args, **kwargs)
        except Exception:
            logger.exception("tether's %s receiver failed; the re-check is the safety net", receiver.__name__)

    return safe  # type: ignore[return-value]


@_never_raises
def _request_started(sender: Any, environ: Any = None, scope: Any = None, **kwargs: Any) -> None:
    """Record the request's session (Django runs a request's sync code, and its saves, in one thread)."""
    header = None
    if environ is not None:
        header = environ.get("HTTP_COOKIE")
    elif scope is not None:
        header = scope_header(scope, b"cookie")
    key = parse_cookie(header).get(settings.SESSION_COOKIE_NAME) if header else None
    _request.session_ref = session_ref(key) if key else None


@_never_raises
def _request_finished(sender: Any, **kwargs: Any) -> None:
    _request.session_ref = None


@_never_raises
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Give the login an id that survives ``update_session_auth_hash()``'s new session key."""
    session = getattr(request, "session", None)
    if session is not None and not session.get(LOGIN_KEY):  # the same user logging in again keeps it
        session[LOGIN_KEY] = secrets.token_urlsafe(16)
    if getattr(user, "pk", None) is not None:  # login() gave the session a new key: the old one is gone
        forget_logins(user_pk=str(user.pk))


@_never_raises
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Close the sockets of the session logging out, in every process (before Django flushes it)."""
    session = getattr(request, "session", None)
    if user is None or session is None or not getattr(user, "is_authenticated", False):
        return
    key = session.session_key
    forget_logins(session_refs=[session_ref(key)] if key else (), user_pk=str(user.pk))  # before the logout returns
    login_ref = session.get(LOGIN_KEY)
    if key is None and login_ref is None:
        return
    message = _new("logout", u=str(user.pk), s=session_ref(key) if key else None, l=login_ref)
    _publish(message, f"the logout of user {user.pk}")


@_never_raises
def _user_saved(
    sender: Any, instance: Any, created: bool = False, raw: bool = False, using: Any = None, **kwargs: Any
) -> None:
    if raw or created or instance.pk is None:
        return
    fields = kwargs.get("update_fields")
    fields = None if fields is None else set(fields)
    pk = str(instance.pk)
    if getattr(instance, "is_active", True) is False and (fields is None or "is_active" in fields):
        message = _new("user", u=pk, r="user deactivated")
    elif getattr(instance, "_password", None) is not None and (fields is None or "password" in fields):
        # set_password() then save(): keep the sockets of the session of the request doing it
        exempt = getattr(_request, "session_ref", None)
        message = _new("user", u=pk, r="password changed", x=exempt, d=credential_digest(instance))
    elif fields is not None and "password" in fields:  # e.g. a hasher upgrade: re-check, don't guess
        message = _new("recheck", u=pk)
    else:
        return
    forget_logins(user_pk=pk)  # now, and again when the message is applied after the commit
    transaction.on_commit(
        partial(_publish, message, f"the {message.get('r', 'password update')} of user {pk}"), using=using
    )


@_never_raises
def _user_deleted(sender: Any, instance: Any, using: Any = None, **kwargs: Any) -> None:
    if instance.pk is None:
        return
    message = _new("user", u=str(instance.pk), r="user deleted")
    forget_logins(user_pk=str(instance.pk))
    transaction.on_commit(partial(_publish, message, f"the deletion of user {instance.pk}"), using=using)


def connect_signals() -> None:
    """Connect the receivers (``TetherConfig.ready()``); idempotent. Nothing without django.contrib.auth."""
    if not apps.is_installed("django.contrib.auth"):
        return
    model = get_user_model()
    request_started.connect(_request_started, dispatch_uid="tether.revocation.request_started")
    request_finished.connect(_request_finished, dispatch_uid="tether.revocation.request_finished")
    user_logged_in.connect(_logged_in, dispatch_uid="tether.revocation.logged_in")
    user_logged_out.connect(_logged_out, dispatch_uid="tether.revocation.logged_out")
    post_save.connect(_user_saved, sender=model, dispatch_uid="tether.revocation.user_saved")
    post_delete.connect(_user_deleted, sender=model, dispatch_uid="tether.revocation.user_deleted")
