"""The WebSocket connection: a typed face over ASGI's receive/send, and the only owner of its state.

One ``ConnectionState`` enum guards every call, so protocol misuse (sending
before ``accept()``, receiving after ``close()``) raises ``InvalidState`` with
the fix in its message instead of a server-specific error or a hang. Only this
module writes the state. A connection ends one of three ways, and the
handler's next ``receive*``/``send_*`` tells which:

- the handler closed it (``close()``): ``InvalidState``, a bug in the handler;
- the client left: ``Disconnected(code)``;
- tether closed it (``terminate()``: overflow, limits, revoked login,
  shutdown): ``Disconnected(code)`` too, as if the client had left, so
  handlers need no code of their own. A handler blocked in ``receive()`` is
  woken with it.

Sessions, users and groups belong to layers above (``tether.auth``,
``tether.hub``); the router plugs them in through ``Services``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from django.core.serializers.json import DjangoJSONEncoder
from django.http import QueryDict
from django.http.cookie import parse_cookie
from django.utils.datastructures import CaseInsensitiveMapping
from django.utils.encoding import escape_uri_path
from django.utils.functional import cached_property

from ._deadline import within
from ._types import Frame, Message, Receive, Scope, Send, User
from .codes import CloseCode
from .exceptions import Disconnected, InvalidMessage, InvalidState
from .positions import JoinResult, Position

if TYPE_CHECKING:
    from django.contrib.sessions.backends.base import SessionBase
    from django.urls import ResolverMatch

__all__ = [
    "CLOSE_TIMEOUT",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "ConnectionState",
    "GroupHook",
    "Services",
    "WebSocket",
    "decode_json",
    "encode_json",
    "scope_header",
]

logger = logging.getLogger("tether.connection")
limits_logger = logging.getLogger("tether.limits")

CLOSE_TIMEOUT = 5.0
"""Seconds ``terminate()`` waits for the server to take the close frame before giving up on it.

A client that stops reading keeps the server's write buffer full, so the close
frame may never go out; tether releases the connection anyway after this long.
"""

TOKEN_SUBPROTOCOL_PREFIX = "bearer."
"""An offered subprotocol starting with this carries a token (``tether.auth``): never listed, never selectable."""

GroupHook = Callable[[str, Frame, Position | None], Awaitable[Frame | None]]
"""Called with ``(group, frame, position)`` before a group message goes out; returns the frame to send, or None.

``position`` is the message's ``Position`` in a group with history, else None.
A function handler sets ``socket.group_hook`` to one; ``SocketView`` sets it
to its ``group_message``.
"""


class ConnectionState(enum.Enum):
    """Where a connection stands (``WebSocket.connection_state``); it only ever moves forward."""

    CONNECTING = "connecting"  # handshake not answered yet
    OPEN = "open"  # accepted: send and receive allowed
    CLOSING = "closing"  # a close is under way
    CLOSED = "closed"  # closed by either side


class _Closer(enum.Enum):
    HANDLER = "handler"
    PEER = "peer"
    TETHER = "tether"


class Services(Protocol):
    """What the layers above plug into a socket: its session and user, its groups, the accept hook."""

    def session(self, socket: WebSocket) -> SessionBase: ...

    async def user(self, socket: WebSocket) -> User: ...

    async def join(self, socket: WebSocket, group: str, since: Position | None = None) -> JoinResult: ...

    async def leave(self, socket: WebSocket, group: str) -> None: ...

    def groups(self, socket: WebSocket) -> frozenset[str]: ...

    async def before_accept(self, socket: WebSocket) -> None: ...


class _Unserved:
    """The services of a socket built outside tether's router: none."""

    def _refuse(self, what: str) -> InvalidState:
        return InvalidState(f"{what} needs a socket served by tether's router (or tether.testing.connect())")

    def session(self, socket: WebSocket) -> SessionBase:
        raise self._refuse("socket.session")

    async def user(self, socket: WebSocket) -> User:
        raise self._refuse("socket.auser()")

    async def join(self, socket: WebSocket, group: str, since: Position | None = None) -> JoinResult:
        raise self._refuse("socket.join()")

    async def leave(self, socket: WebSocket, group: str) -> None:
        raise self._refuse("socket.leave()")

    def groups(self, socket: WebSocket) -> frozenset[str]:
        return frozenset()

    async def before_accept(self, socket: WebSocket) -> None:
        return None


_UNSERVED = _Unserved()


def encode_json(data: Any) -> str:
    """Encode ``data`` the way every tether JSON frame is encoded (DjangoJSONEncoder, compact).

    Raises ``ValueError`` for a float NaN or infinity: Python's ``json`` would
    write ``NaN``/``Infinity``, which is not JSON and which browsers'
    ``JSON.parse`` rejects, so the client would lose the whole message.
    """
    try:
        return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError(
            "can't send NaN or Infinity as JSON (not valid JSON: browsers' JSON.parse rejects the whole message); "
            "replace them first, e.g. with None or a string"
        ) from None


class WebSocket:
    """One WebSocket connection, handed to every handler.

    Receiving methods raise ``Disconnected`` when the client goes away (or
    tether closed the socket); the ``iter_*`` methods end quietly instead.
    Sending methods raise ``Disconnected`` likewise, and ``InvalidState``
    before ``accept()`` or after the handler's own ``close()``.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, services: Services | None = None) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"WebSocket needs a 'websocket' scope, got {scope['type']!r}")
        self.scope = scope
        self._receive = receive
        self._send = send
        self._services: Services = services if services is not None else _UNSERVED
        self.connection_state = ConnectionState.CONNECTING
        self.close_code: int | None = None  # set once closed, by either side
        self.close_reason = ""
        self._closer: _Closer | None = None
        self._closing: asyncio.Future[None] | None = None  # set while a close is under way, for its waiters
        self._connect: asyncio.Future[None] | None = None  # the websocket.connect event, taken once
        self._opened: asyncio.Future[bool] | None = None  # wait_open()'s waiters
        self._receiving: asyncio.Task[Any] | None = None  # the task blocked in receive(), woken by terminate()
        self._woken = False
        self.max_message_size: int | None = None  # bytes; set from TETHER["MAX_MESSAGE_SIZE"] by the router
        self.resolver_match: ResolverMatch | None = None
        self.state = SimpleNamespace()  # free for the application's per-connection data
        self.group_hook: GroupHook | None = None  # see GroupHook; SocketView sets it to group_message
        self.presence_hook: Callable[[], Any] | None = None  # the info shown in presence; SocketView.presence_info
        self._user: User | None = None
        self._user_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"<WebSocket {self.path!r} {self.connection_state.value}>"

    # -- what the handshake carried -------------------------------------

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments captured by the URL pattern (``<slug:room>`` -> ``{"room": ...}``)."""
        return dict(self.resolver_match.kwargs) if self.resolver_match else {}

    @cached_property
    def headers(self) -> CaseInsensitiveMapping[str]:
        """Request headers, case-insensitive; repeated headers are joined with ``", "``."""
        merged: dict[str, str] = {}
        for raw_name, raw_value in self.scope.get("headers", []):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        return CaseInsensitiveMapping(merged)

    @cached_property
    def cookies(self) -> dict[str, str]:
        """The handshake's cookies by name (parsed from its ``Cookie`` header, once)."""
        return parse_cookie(self.headers.get("cookie", ""))

    @cached_property
    def query_params(self) -> QueryDict:
        """The query string as a read-only ``QueryDict``, as ``request.GET`` is in a view."""
        return QueryDict(self.scope.get("query_string", b""))

    @property
    def subprotocols(self) -> list[str]:
        """Subprotocols the client offered, in its order of preference.

        Entries carrying a token (``bearer.<token>``, see ``tether.auth``) are
        left out: a credential is never echoed back, so ``accept()`` can't select one.
        """
        return [p for p in self.scope.get("subprotocols", ()) if not p.startswith(TOKEN_SUBPROTOCOL_PREFIX)]

    @property
    def client(self) -> tuple[str, int] | None:
        client = self.scope.get("client")
        return (str(client[0]), int(client[1])) if client else None

    # -- session, user and groups (provided by the layers above) ----------

    @cached_property
    def session(self) -> SessionBase:
        """The Django session named by the session cookie (any ``SESSION_ENGINE``).

        Loads lazily: read it with the async accessors (``await socket.session.aget(key)``).
        """
        return self._services.session(self)

    async def auser(self) -> User:
        """The user behind the session cookie (``AnonymousUser`` without one), like ``request.auser()``.

        Resolved once per connection without blocking the event loop (and
        with no other side effect); concurrent and later calls, and
        ``socket.user``, get the same object.
        """
        if self._user is None:
            if self._user_lock is None:
                self._user_lock = asyncio.Lock()
            async with self._user_lock:
                if self._user is None:
                    self._user = await self._services.user(self)
        return self._user

    @property
    def user(self) -> User:
        """The user from ``await socket.auser()``; raises ``InvalidState`` before it.

        SocketView, the guards and ``accept()`` (for a socket with a session
        cookie) resolve it before your code needs it.
        """
        if self._user is None:
            raise InvalidState("socket.user is not resolved yet: call await socket.auser() first")
        return self._user

    @property
    def resolved_user(self) -> User | None:
        """The user if ``auser()`` resolved it already, else None (never does I/O; for log lines)."""
        return self._user

    async def join(self, group: str, since: Position | None = None) -> JoinResult:
        """Receive what is broadcast to ``group`` from now on; returns once delivery is in place. Idempotent.

        In a group with history (``TETHER["GROUPS"]``), ``since`` (the last
        position the client saw) first sends every later message the window
        still holds, in order and once, then the live ones with no gap between;
        ``result.recovered`` says whether nothing was lost, ``result.position``
        is where the socket now stands (keep it to rejoin with). Raises
        ``InvalidGroup`` for a bad name, ``InvalidState`` after the handler's
        own ``close()``, ``Disconnected`` once the client left or tether closed
        the socket (as ``receive()`` and ``send_*()`` do),
        ``BackendUnavailable`` when a history group's stream can't be read.
        Membership ends by itself when the socket closes. Joining before
        ``accept()`` is allowed: messages wait for the handshake.
        """
        if self._closer is not None and self._closer is not _Closer.HANDLER:
            # Tether or the client ended it, perhaps between a receive() and this join (a handler can't
            # tell): the handler ends as after any receive or send, with Disconnected.
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        return await self._services.join(self, group, since)

    async def leave(self, group: str) -> None:
        """Stop receiving ``group``'s messages. Idempotent; raises ``InvalidGroup`` for a bad name."""
        await self._services.leave(self, group)

    @property
    def groups(self) -> frozenset[str]:
        """The groups this socket is in."""
        return self._services.groups(self)

    # -- handshake and closing ------------------------------------------

    async def receive_connect(self) -> None:
        """Take the server's ``websocket.connect`` event; idempotent and safe to call concurrently.

        The router calls it before resolving the route. Raises
        ``Disconnected`` if the client left first.
        """
        connect = self._connect
        if connect is not None:
            if not connect.done() or connect.exception() is not None:
                await asyncio.shield(connect)  # another task is taking it: share its outcome
            return
        connect = self._connect = asyncio.get_running_loop().create_future()
        try:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self._peer_closed(message)
                raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
            if message["type"] != "websocket.connect":
                raise InvalidState(f"expected websocket.connect, the server sent {message['type']!r}")
        except asyncio.CancelledError:
            self._connect = None  # nothing taken: a later call tries again
            connect.cancel()
            raise
        except Exception as exc:
            connect.set_exception(exc)
            connect.exception()  # retrieved: raised here and to the other waiters
            raise
        connect.set_result(None)

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Complete the handshake; from now on the socket can send and receive.

        ``subprotocol`` must be one the client offered (see ``subprotocols``).
        Before answering, a socket whose session carries a user resolves it
        and joins ``user_group(user)``. Raises ``InvalidState`` if already
        accepted or closed, ``Disconnected`` if the client left or tether
        closed the socket meanwhile.
        """
        if self.connection_state is not ConnectionState.CONNECTING:
            raise InvalidState(
                f"accept() called on a socket that is {self.connection_state.value}; call it once, first"
            )
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client (it offered {self.subprotocols})"
            )
        await self.receive_connect()
        await self._services.before_accept(self)
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        message: Message = {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        }
        if self.connection_state is not ConnectionState.CONNECTING:  # closed while resolving the user
            self._raise_closed("accept()")
        try:
            await self._send(message)
        except OSError as exc:
            self._peer_gone(exc)
        if self.connection_state is not ConnectionState.CONNECTING:  # closed while the accept went out
            self._raise_closed("accept()")
        self.connection_state = ConnectionState.OPEN
        self._settle_opened(True)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection, or refuse it if not yet accepted (the server answers 403).

        Idempotent: closing a closed socket does nothing, and a close under
        way in another task is waited for. Safe to call from another task
        than the one receiving. The close frame gets ``CLOSE_TIMEOUT`` seconds
        to go out. Afterwards the handler's own
        ``receive``/``send`` raise ``InvalidState``.
        """
        await self._close(_Closer.HANDLER, code, reason)

    async def terminate(self, code: int, reason: str = "", *, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection on tether's behalf (overflow, limits, revoked login, shutdown).

        The handler's next ``receive*``/``send_*`` raises ``Disconnected(code)``,
        and one blocked in ``receive()`` is woken with it. The close frame gets
        ``timeout`` seconds to go out (a client that stops reading may never
        take it); then tether gives up on it and logs so. Idempotent; never
        raises for a peer that is gone.
        """
        if self.connection_state is ConnectionState.CLOSED:
            return
        if self._closer is not None:
            await self._wait_closing()
            return
        self._record_close(_Closer.TETHER, code, reason)
        self._wake_receiver()
        await self._close(_Closer.TETHER, code, reason, timeout)

    async def deny(self, code: int, reason: str, status: int = 403) -> None:
        """Refuse the handshake: HTTP ``status`` with ``"<code> <reason>"`` as the body when the
        server supports the ``websocket.http.response`` extension, else a close with
        ``code`` (which servers also turn into a 403). ``close_code`` records ``code``
        either way. Does nothing once the socket is accepted or closed.
        """
        if self.connection_state is not ConnectionState.CONNECTING:
            return
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self._close(_Closer.TETHER, code, reason)
            return
        self._record_close(_Closer.TETHER, code, reason)
        self._start_closing()
        body = f"{int(code)} {reason}\n".encode()
        try:
            await self.receive_connect()
            await self._send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await self._send({"type": "websocket.http.response.body", "body": body})
        except (Disconnected, OSError):
            pass  # the peer already left: refused all the same
        finally:
            self._set_closed()

    async def _close(self, closer: _Closer, code: int, reason: str, timeout: float = CLOSE_TIMEOUT) -> None:
        if self.connection_state is ConnectionState.CLOSED:
            return
        if self.connection_state is ConnectionState.CLOSING:
            await self._wait_closing()  # another task's close is under way (bounded by its timeout)
            return
        handshake = self.connection_state is ConnectionState.CONNECTING
        reason = reason.encode()[:123].decode(errors="ignore")  # a close frame holds 123 bytes of reason
        self._record_close(closer, code, reason)
        self._start_closing()
        try:
            if handshake:
                await self.receive_connect()
            await within(self._send({"type": "websocket.close", "code": int(code), "reason": reason}), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "Gave up sending close %d to websocket %s after %gs: the client isn't reading; connection released",
                int(code),
                escape_uri_path(self.path),
                timeout,
            )
        except (Disconnected, OSError, RuntimeError) as exc:
            # The peer is already gone (a RuntimeError is a server refusing the close after its own).
            logger.debug("websocket %s: close %d not sent: %r", escape_uri_path(self.path), int(code), exc)
        finally:
            self._set_closed()

    def _record_close(self, closer: _Closer, code: int, reason: str) -> None:
        if self._closer is None:
            self._closer = closer
            self.close_code, self.close_reason = int(code), reason

    def _start_closing(self) -> None:
        self.connection_state = ConnectionState.CLOSING
        self._settle_opened(False)

    async def _wait_closing(self) -> None:
        if self.connection_state is ConnectionState.CLOSING:
            if self._closing is None:
                self._closing = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._closing)

    def _set_closed(self) -> None:
        self.connection_state = ConnectionState.CLOSED
        self._settle_opened(False)
        closing = self._closing
        if closing is not None and not closing.done():
            closing.set_result(None)

    def _peer_closed(self, message: Message) -> None:
        self._record_close(
            _Closer.PEER, int(message.get("code") or CloseCode.ABNORMAL_CLOSURE), str(message.get("reason") or "")
        )
        self._set_closed()

    def _peer_gone(self, exc: OSError) -> NoReturn:
        """The server could not send: the peer is gone."""
        self._peer_closed({"code": CloseCode.ABNORMAL_CLOSURE})
        raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason) from exc

    def _raise_closed(self, doing: str) -> NoReturn:
        """Raise the right error for ``doing`` on a socket that is not open."""
        if self.connection_state is ConnectionState.CONNECTING:
            raise InvalidState(f"{doing} before accept(): call await socket.accept() first")
        if self._closer is _Closer.HANDLER:
            raise InvalidState(f"{doing} after close(): the socket is closed")
        raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)

    def _settle_opened(self, opened: bool) -> None:
        waiter = self._opened
        if waiter is not None and not waiter.done():
            waiter.set_result(opened)

    def _wake_receiver(self) -> None:
        task = self._receiving
        if task is not None and task is not asyncio.current_task() and not task.done():
            self._woken = True
            task.cancel()

    async def wait_open(self) -> bool:
        """Wait until the handshake is answered: True once accepted, False if it was closed instead."""
        state = self.connection_state
        if state is ConnectionState.OPEN:
            return True
        if state is not ConnectionState.CONNECTING:
            return False
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._opened)

    # -- receiving ------------------------------------------------------

    async def receive(self) -> str | bytes:
        """Wait for the next message: ``str`` for a text frame, ``bytes`` for a binary one.

        Raises ``Disconnected`` when the client leaves or tether closed the
        socket (and again on every later call), ``InvalidState`` before
        ``accept()`` or after ``close()``. A message over
        ``max_message_size`` closes the socket with 1009 and raises
        ``Disconnected(1009)``.
        """
        if self.connection_state is not ConnectionState.OPEN:
            self._raise_closed("receive()")
        self._receiving = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self._woken:
                raise
            self._woken = False  # terminate() woke us: the connection is over
            task = self._receiving
            if sys.version_info >= (3, 11) and task is not None:
                task.uncancel()
            self._raise_closed("receive()")
        finally:
            self._receiving = None
        kind = message["type"]
        if kind == "websocket.receive":
            if self.connection_state is not ConnectionState.OPEN:
                self._raise_closed("receive()")  # tether closed it while this message was on its way
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            limit = self.max_message_size
            if limit is not None and len(data) * 4 > limit and _size(data) > limit:
                await self._too_big(_size(data), limit)
            return data
        if kind == "websocket.disconnect":
            self._peer_closed(message)
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        raise InvalidState(f"unexpected ASGI message {kind!r} while receiving")

    async def _too_big(self, size: int, limit: int) -> None:
        limits_logger.warning(
            "Closing websocket %s for user %s: message of %d bytes is over MAX_MESSAGE_SIZE=%d (closed %d)",
            escape_uri_path(self.path),
            _user_label(self._user),
            size,
            limit,
            CloseCode.MESSAGE_TOO_BIG,
        )
        await self.terminate(CloseCode.MESSAGE_TOO_BIG, "message too big")
        raise Disconnected(CloseCode.MESSAGE_TOO_BIG, "message too big")

    async def receive_text(self) -> str:
        """The next text message; a binary frame raises ``InvalidMessage`` (close code 1003)."""
        data = await self.receive()
        if not isinstance(data, str):
            raise InvalidMessage("expected a text frame, got a binary one", CloseCode.UNSUPPORTED_DATA)
        return data

    async def receive_bytes(self) -> bytes:
        """The next binary message; a text frame raises ``InvalidMessage`` (close code 1003)."""
        data = await self.receive()
        if not isinstance(data, bytes):
            raise InvalidMessage("expected a binary frame, got a text one", CloseCode.UNSUPPORTED_DATA)
        return data

    async def receive_json(self) -> Any:
        """The next text message decoded as JSON; malformed JSON raises ``InvalidMessage`` (1007)."""
        return decode_json(await self.receive_text())

    async def iter_text(self) -> AsyncIterator[str]:
        """Yield text messages until the client disconnects."""
        receive = self.receive
        try:
            while True:
                data = await receive()
                if not isinstance(data, str):
                    raise InvalidMessage("expected a text frame, got a binary one", CloseCode.UNSUPPORTED_DATA)
                yield data
        except Disconnected:
            return

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield binary messages until the client disconnects."""
        receive = self.receive
        try:
            while True:
                data = await receive()
                if isinstance(data, str):
                    raise InvalidMessage("expected a binary frame, got a text one", CloseCode.UNSUPPORTED_DATA)
                yield data
        except Disconnected:
            return

    async def iter_json(self) -> AsyncIterator[Any]:
        """Yield decoded JSON messages until the client disconnects."""
        try:
            while True:
                yield await self.receive_json()
        except Disconnected:
            return

    # -- sending --------------------------------------------------------

    async def send_text(self, data: str) -> None:
        """Send one text frame. ``TypeError`` for a non-``str``; ``InvalidState`` before
        ``accept()`` or once closed; a peer gone meanwhile raises ``Disconnected``."""
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes a str, not {type(data).__name__}; use send_bytes() or send_json()")
        if self.connection_state is not ConnectionState.OPEN:
            self._raise_closed("send")
        try:
            await self._send({"type": "websocket.send", "text": data})
        except OSError as exc:  # e.g. uvicorn's ClientDisconnected
            self._peer_gone(exc)

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame (``bytes``, ``bytearray`` or ``memoryview``); raises as
        ``send_text()`` does."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__name__}; use send_text() or send_json()")
        if self.connection_state is not ConnectionState.OPEN:
            self._raise_closed("send")
        try:
            await self._send({"type": "websocket.send", "bytes": bytes(data)})
        except OSError as exc:
            self._peer_gone(exc)

    async def send_json(self, data: Any) -> None:
        """Send ``data`` as one JSON text frame (DjangoJSONEncoder: dates, UUIDs, Decimals work)."""
        await self.send_text(encode_json(data))

    async def send_frame(self, frame: Frame) -> bool:
        """Send an encoded frame if the socket is open; False, sending nothing, if it is not.

        The hub's writers send through here: the state is checked right
        before the send, after whatever they awaited, so nothing ever goes
        out after a close. Never raises for a closed socket or a gone peer.
        """
        if self.connection_state is not ConnectionState.OPEN:
            return False
        message: Message = (
            {"type": "websocket.send", "text": frame}
            if type(frame) is str
            else {"type": "websocket.send", "bytes": frame}
        )
        try:
            await self._send(message)
        except OSError:
            self._peer_closed({"code": CloseCode.ABNORMAL_CLOSURE})
            return False
        return True


def _user_label(user: User | None) -> str:
    if user is None:
        return "-"
    return str(user.pk) if user.is_authenticated else "anonymous"


def scope_header(scope: Scope, name: bytes) -> str | None:
    """One request header straight from the ASGI scope (``name`` lower-case), without building ``headers``."""
    for key, value in scope.get("headers", ()):
        if key == name or key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _size(data: str | bytes) -> int:
    """The size of a message in bytes (UTF-8 for text; a lone surrogate counts without raising)."""
    return len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(text: str) -> Any:
    """Decode a client's JSON text, raising ``InvalidMessage`` (1007) on malformed input.

    Nesting deeper than Python's recursion limit (``"[" * 32000``, a few dozen
    KB) is refused the same way: it is the client's fault, not a server error.
    So are ``NaN`` and ``Infinity``, which Python's ``json`` accepts but JSON
    does not: echoed back they could not be sent (``encode_json`` refuses them).
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise InvalidMessage(f"malformed JSON: {exc}", CloseCode.INVALID_DATA) from None
    except RecursionError:
        raise InvalidMessage("malformed JSON: nested too deeply", CloseCode.INVALID_DATA) from None
