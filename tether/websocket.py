"""The WebSocket connection object: a typed face over ASGI's receive/send.

One ``ConnectionState`` enum guards every call, so protocol misuse (sending
before ``accept()``, receiving after ``close()``) raises ``InvalidState`` with
the fix in its message instead of a server-specific error or a hang.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from enum import Enum
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

from django.core.serializers.json import DjangoJSONEncoder
from django.http import QueryDict
from django.http.cookie import parse_cookie
from django.utils.datastructures import CaseInsensitiveMapping
from django.utils.functional import cached_property

from ._types import Message, Receive, Scope, Send
from .codes import CloseCode
from .exceptions import Disconnected, InvalidMessage, InvalidState

if TYPE_CHECKING:
    from django.contrib.sessions.backends.base import SessionBase
    from django.urls import ResolverMatch

    from .auth import User
    from .hub import GroupHook, _Member

__all__ = ["ConnectionState", "WebSocket", "decode_json", "encode_json", "scope_header"]


class ConnectionState(Enum):
    CONNECTING = "connecting"  # handshake not answered yet
    OPEN = "open"  # accepted: send and receive allowed
    CLOSING = "closing"  # close() under way
    CLOSED = "closed"  # closed by either side


def encode_json(data: Any) -> str:
    """Encode ``data`` the way every tether JSON frame is encoded (DjangoJSONEncoder, compact)."""
    return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)


class WebSocket:
    """One WebSocket connection, handed to every handler.

    Receiving methods raise ``Disconnected`` when the client goes away; the
    ``iter_*`` methods end quietly instead. Sending methods raise
    ``Disconnected`` if the client is gone and ``InvalidState`` before
    ``accept()`` or after ``close()``.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"WebSocket needs a 'websocket' scope, got {scope['type']!r}")
        self.scope = scope
        self._receive = receive
        self._send = send
        self.connection_state = ConnectionState.CONNECTING
        self.close_code: int | None = None  # set once closed, by either side
        self.close_reason = ""
        self._connect_received = False
        self._peer_closed = False  # the client closed first: later calls raise Disconnected again
        self.max_message_size: int | None = None  # bytes; set from TETHER["MAX_MESSAGE_SIZE"] by the router
        self.resolver_match: ResolverMatch | None = None
        self.state = SimpleNamespace()  # free for the application's per-connection data
        self._member: _Member | None = None  # the hub's record of this socket's groups
        self._group_hook: GroupHook | None = None  # SocketView.group_message, when overridden
        self._user: User | None = None  # resolved by auser() (tether.auth)
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
        return parse_cookie(self.headers.get("cookie", ""))

    @cached_property
    def query_params(self) -> QueryDict:
        return QueryDict(self.scope.get("query_string", b""))

    @property
    def subprotocols(self) -> list[str]:
        """Subprotocols the client offered, in its order of preference."""
        return list(self.scope.get("subprotocols", []))

    @property
    def client(self) -> tuple[str, int] | None:
        client = self.scope.get("client")
        return (str(client[0]), int(client[1])) if client else None

    # -- session and user (tether.auth) ----------------------------------

    @cached_property
    def session(self) -> SessionBase:
        """The Django session named by the session cookie (any ``SESSION_ENGINE``).

        Loads lazily: read it with the async accessors (``await socket.session.aget(key)``).
        """
        from .auth import get_session

        return get_session(self)

    async def auser(self) -> User:
        """The user behind the session cookie (``AnonymousUser`` without one), like ``request.auser()``.

        Resolved once per connection without blocking the event loop; later
        calls, and ``socket.user``, return the same object.
        """
        from .auth import resolve_user

        return self._user if self._user is not None else await resolve_user(self)

    @property
    def user(self) -> User:
        """The user from ``await socket.auser()``; raises ``InvalidState`` before it.

        SocketView and the guards resolve it before your code runs.
        """
        if self._user is None:
            raise InvalidState("socket.user is not resolved yet: call await socket.auser() first")
        return self._user

    # -- handshake and closing ------------------------------------------

    async def _await_connect(self) -> None:
        """Take the ``websocket.connect`` event; idempotent."""
        if self._connect_received:
            return
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._closed_by_peer(message)
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        if message["type"] != "websocket.connect":
            raise InvalidState(f"expected websocket.connect, the server sent {message['type']!r}")
        self._connect_received = True

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Complete the handshake; from now on the socket can send and receive.

        ``subprotocol`` must be one the client offered (see ``subprotocols``).
        Raises ``InvalidState`` if already accepted or closed.
        """
        if self.connection_state is not ConnectionState.CONNECTING:
            raise InvalidState(
                f"accept() called on a socket that is {self.connection_state.value}; call it once, first"
            )
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(
                f"subprotocol {subprotocol!r} was not offered by the client (it offered {self.subprotocols})"
            )
        await self._await_connect()
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        message: Message = {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        }
        await self._send(message)
        self.connection_state = ConnectionState.OPEN
        if self._member is not None:
            self._member.wake()  # group messages that arrived before accept() go out now

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection, or refuse it if not yet accepted (the server answers 403).

        Idempotent: closing a closed socket does nothing. Safe to call from
        another task than the one receiving.
        """
        if self.connection_state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        handshake = self.connection_state is ConnectionState.CONNECTING
        self.connection_state = ConnectionState.CLOSING
        reason = reason.encode()[:123].decode(errors="ignore")  # a close frame holds 123 bytes of reason
        try:
            if handshake:
                await self._await_connect()
            await self._send({"type": "websocket.close", "code": int(code), "reason": reason})
        except (Disconnected, OSError):
            pass  # the peer is already gone: closed all the same
        finally:
            self.connection_state = ConnectionState.CLOSED
            if self.close_code is None:
                self.close_code, self.close_reason = int(code), reason

    def _closed_by_peer(self, message: Message) -> None:
        self.connection_state = ConnectionState.CLOSED
        if self.close_code is None:
            self._peer_closed = True
            self.close_code = int(message.get("code") or CloseCode.ABNORMAL_CLOSURE)
            self.close_reason = str(message.get("reason") or "")

    # -- groups ---------------------------------------------------------

    async def join(self, group: str) -> None:
        """Receive what is broadcast to ``group`` from now on. Idempotent.

        Raises ``InvalidGroup`` for a bad name, ``InvalidState`` on a closed
        socket. Membership ends by itself when the socket closes. Joining
        before ``accept()`` is allowed: messages wait for the handshake.
        """
        from .hub import get_hub

        await (await get_hub()).join(self, group)

    async def leave(self, group: str) -> None:
        """Stop receiving ``group``'s messages. Idempotent; raises ``InvalidGroup`` for a bad name."""
        from .hub import validate_group

        validate_group(group)
        if self._member is not None:
            await self._member.hub.leave(self, group)

    @property
    def groups(self) -> frozenset[str]:
        """The groups this socket is in."""
        return frozenset(self._member.groups) if self._member is not None else frozenset()

    # -- receiving ------------------------------------------------------

    async def receive(self) -> str | bytes:
        """Wait for the next message: ``str`` for a text frame, ``bytes`` for a binary one.

        Raises ``Disconnected`` when the client leaves (and again on every later
        call), ``InvalidState`` before ``accept()`` or after ``close()``. A
        message over ``max_message_size`` closes the socket with 1009 and raises
        ``Disconnected(1009)``.
        """
        if self.connection_state is not ConnectionState.OPEN:
            self._check_can_receive()
        message = await self._receive()
        if message["type"] == "websocket.receive":
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            limit = self.max_message_size
            if limit is not None and len(data) * 4 > limit and _size(data) > limit:
                await self._too_big(_size(data), limit)
            return data
        if message["type"] == "websocket.disconnect":
            self._closed_by_peer(message)
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        raise InvalidState(f"unexpected ASGI message {message['type']!r} while receiving")

    async def _too_big(self, size: int, limit: int) -> None:
        from .limits import violate

        detail = f"message of {size} bytes is over MAX_MESSAGE_SIZE={limit}"
        await violate(self, CloseCode.MESSAGE_TOO_BIG, "message too big", detail)
        raise Disconnected(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _check_can_receive(self) -> None:
        state = self.connection_state
        if state is ConnectionState.OPEN:
            return
        if state is ConnectionState.CONNECTING:
            raise InvalidState("receive() before accept(): call await socket.accept() first")
        if self._peer_closed:
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        raise InvalidState("receive() after close(): the socket is closed")

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
        if not isinstance(data, str):
            raise TypeError(f"send_text() takes a str, not {type(data).__name__}; use send_bytes() or send_json()")
        if self.connection_state is not ConnectionState.OPEN:
            self._refuse_send()
        try:
            await self._send({"type": "websocket.send", "text": data})
        except OSError as exc:  # e.g. uvicorn's ClientDisconnected
            self._send_failed(exc)

    async def send_bytes(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes() takes bytes, not {type(data).__name__}; use send_text() or send_json()")
        if self.connection_state is not ConnectionState.OPEN:
            self._refuse_send()
        try:
            await self._send({"type": "websocket.send", "bytes": bytes(data)})
        except OSError as exc:
            self._send_failed(exc)

    async def send_json(self, data: Any) -> None:
        """Send ``data`` as one JSON text frame (DjangoJSONEncoder: dates, UUIDs, Decimals work)."""
        await self.send_text(encode_json(data))

    def _refuse_send(self) -> None:
        """Raise the right error for a send in a state other than OPEN."""
        if self.connection_state is ConnectionState.CONNECTING:
            raise InvalidState("send before accept(): call await socket.accept() first")
        if self._peer_closed:
            raise Disconnected(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        raise InvalidState("send after close(): the socket is closed")

    def _send_failed(self, exc: OSError) -> NoReturn:
        """The server could not send: the peer is gone."""
        self._closed_by_peer({"code": CloseCode.ABNORMAL_CLOSURE})
        raise Disconnected(CloseCode.ABNORMAL_CLOSURE) from exc


def scope_header(scope: Scope, name: bytes) -> str | None:
    """One request header straight from the ASGI scope (``name`` lower-case), without building ``headers``."""
    for key, value in scope.get("headers", ()):
        if key == name or key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _size(data: str | bytes) -> int:
    """The size of a message in bytes (UTF-8 for text; a lone surrogate counts without raising)."""
    return len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)


def decode_json(text: str) -> Any:
    """Decode a client's JSON text, raising ``InvalidMessage`` (1007) on malformed input."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidMessage(f"malformed JSON: {exc}", CloseCode.INVALID_DATA) from None
