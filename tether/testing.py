"""Test WebSocket handlers in-process: the real ASGI application, no server, no sleeps.

::

    from tether.testing import connect

    async def test_echo():
        async with connect("/ws/echo/") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong!"

A handler exception is re-raised in the test (``raise_app_exceptions=False``
to see the 1011 close instead), and every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from .asgi import TetherASGIHandler
from .codes import CloseCode
from .exceptions import Disconnected

__all__ = ["Rejected", "WebSocketTestClient", "connect", "get_application", "session_cookie"]

_application: Any = None


def get_application() -> Any:
    """The process's ``TetherASGIHandler`` used by ``connect()`` (created on first use)."""
    global _application
    if _application is None:
        _application = TetherASGIHandler()
    return _application


class Rejected(Exception):
    """The application refused the handshake.

    ``code`` is the close code it sent (servers turn it into HTTP 403); when it
    answered with an HTTP response (``status``, ``body``) instead, ``code`` is
    the one tether wrote at the start of the body ("4401 login required"), or None.
    """

    def __init__(self, code: int | None, reason: str = "", status: int = 403, body: bytes = b"") -> None:
        self.code, self.reason, self.status, self.body = code, reason, status, body
        super().__init__(f"handshake rejected: HTTP {status}" + (f", close code {code}" if code is not None else ""))


class WebSocketTestClient:
    """The client side of one in-process connection, returned by ``connect()``."""

    def __init__(self, application: Any, scope: dict[str, Any], timeout: float, raise_app_exceptions: bool) -> None:
        self.scope = scope
        self.timeout = timeout
        self.raise_app_exceptions = raise_app_exceptions
        self.subprotocol: str | None = None
        self.accept_headers: dict[str, str] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._client_gone = False
        self._exceptions: list[BaseException] = scope["extensions"]["tether.testing"]["exceptions"]
        self._task = asyncio.create_task(application(scope, self._app_receive, self._app_send))

    async def _app_receive(self) -> dict[str, Any]:
        return await self._to_app.get()

    async def _app_send(self, message: dict[str, Any]) -> None:
        if self._client_gone and message["type"] == "websocket.send":
            raise OSError("the test client has disconnected")  # what ASGI servers do
        await self._from_app.put(message)

    def _raise_app_exception(self) -> None:
        if self._exceptions and self.raise_app_exceptions:
            raise self._exceptions.pop(0)

    async def _next(self) -> dict[str, Any]:
        """The app's next message, or the app's own exception, within ``timeout``."""
        if self._from_app.empty() and self._task.done():
            if not self._task.cancelled():
                self._task.result()  # raises what escaped the application
            self._raise_app_exception()
            raise AssertionError("the application finished without closing the socket")
        getter = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({getter, self._task}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            if self._task in done:
                return await self._next()
            raise TimeoutError(f"the application sent nothing within {self.timeout}s")
        return getter.result()

    async def _handshake(self) -> None:
        await self._to_app.put({"type": "websocket.connect"})
        message = await self._next()
        kind = message["type"]
        if kind == "websocket.accept":
            self.subprotocol = message.get("subprotocol")
            self.accept_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
            return
        if kind == "websocket.close":
            await self._finish()
            self._raise_app_exception()
            raise Rejected(int(message.get("code", CloseCode.NORMAL_CLOSURE)), message.get("reason") or "")
        if kind == "websocket.http.response.start":
            body = b""
            while True:
                part = await self._next()
                body += part.get("body", b"")
                if not part.get("more_body"):
                    break
            await self._finish()
            head = body.split(b" ", 1)[0]  # tether's refusals start their body with the close code
            raise Rejected(int(head) if head.isdigit() else None, status=int(message["status"]), body=body)
        raise AssertionError(f"unexpected handshake answer {kind!r}")

    # -- talking to the application -----------------------------------------

    async def send_message(self, message: dict[str, Any]) -> None:
        """Hand a raw ASGI event to the application (for protocol-level tests)."""
        await self._to_app.put(message)

    async def send_text(self, data: str) -> None:
        await self.send_message({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send_message({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any) -> None:
        await self.send_text(json.dumps(data))

    async def receive(self) -> str | bytes:
        """The next message the application sent; ``Disconnected`` if it closed instead."""
        if self.close_code is not None:
            raise Disconnected(self.close_code, self.close_reason)
        message = await self._next()
        if message["type"] == "websocket.close":
            self.close_code = int(message.get("code", CloseCode.NORMAL_CLOSURE))
            self.close_reason = message.get("reason") or ""
            await self._finish()
            self._raise_app_exception()
            raise Disconnected(self.close_code, self.close_reason)
        if message["type"] != "websocket.send":
            raise AssertionError(f"unexpected message from the application: {message!r}")
        text = message.get("text")
        return text if text is not None else bytes(message["bytes"])

    async def receive_text(self) -> str:
        data = await self.receive()
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        return data

    async def receive_bytes(self) -> bytes:
        data = await self.receive()
        assert isinstance(data, bytes), f"expected a binary frame, got {data!r}"
        return data

    async def receive_json(self) -> Any:
        return json.loads(await self.receive_text())

    async def wait_closed(self) -> int:
        """Wait until the application closes the socket; returns the close code.

        Messages sent before the close are discarded.
        """
        while True:
            try:
                await self.receive()
            except Disconnected as exc:
                return exc.code

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE) -> None:
        """Disconnect as a client would, and wait for the handler to finish."""
        if self.close_code is None:
            self.close_code = int(code)
        await self._finish()
        self._raise_app_exception()

    async def _finish(self) -> None:
        """Tell the app the connection is gone (as a server does) and wait for it to return."""
        if not self._client_gone:
            self._client_gone = True
            await self._to_app.put(
                {"type": "websocket.disconnect", "code": self.close_code or CloseCode.NORMAL_CLOSURE}
            )
        done, _ = await asyncio.wait({self._task}, timeout=self.timeout)
        if not done:
            self._task.cancel()
            raise TimeoutError(f"the handler did not return within {self.timeout}s of the disconnect")
        escaped = None if self._task.cancelled() else self._task.exception()
        if escaped is not None:
            raise escaped  # it escaped the application entirely


async def session_cookie(user: Any, backend: str | None = None) -> str:
    """A ``Cookie`` header value holding a fresh session logged in as ``user``.

    The session is saved through the configured ``SESSION_ENGINE`` with
    ``django.contrib.auth.alogin``, so signals fire as for a real login.
    """
    from django.conf import settings
    from django.contrib.auth import alogin
    from django.http import HttpRequest

    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore()
    await alogin(request, user, backend or getattr(user, "backend", None) or settings.AUTHENTICATION_BACKENDS[0])
    await request.session.asave()
    return f"{settings.SESSION_COOKIE_NAME}={request.session.session_key}"


@asynccontextmanager
async def connect(
    path: str,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    subprotocols: Iterable[str] = (),
    application: Any = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    scheme: str = "ws",
    timeout: float = 3.0,
    raise_app_exceptions: bool = True,
    scope: Mapping[str, Any] | None = None,
    user: Any = None,
    origin: str | None = None,
) -> AsyncIterator[WebSocketTestClient]:
    """Open a WebSocket to ``path`` ("/ws/chat/lobby/?x=1") on the application, in-process.

    ``user`` logs that user in: a real session is saved through the configured
    ``SESSION_ENGINE`` (as ``Client.force_login()`` does) and its cookie sent.
    ``origin`` sets the ``Origin`` header, as a browser would.
    Raises ``Rejected`` if the handshake is refused. On exit the client
    disconnects (code 1000) and waits for the handler to return.
    """
    parts = urlsplit(path)
    pairs = list(headers.items() if isinstance(headers, Mapping) else (headers or ()))
    if origin is not None:
        pairs.append(("origin", origin))
    if user is not None and user.is_authenticated:
        others = [value for name, value in pairs if name.lower() == "cookie"]
        pairs = [(name, value) for name, value in pairs if name.lower() != "cookie"]
        pairs.append(("cookie", "; ".join([*others, await session_cookie(user)])))
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    if not any(name == b"host" for name, _ in raw_headers):
        raw_headers.insert(0, (b"host", b"testserver"))
    full_scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": scheme,
        "http_version": "1.1",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "root_path": "",
        "query_string": parts.query.encode(),
        "headers": raw_headers,
        "client": client,
        "server": ("testserver", 80),
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}, "tether.testing": {"exceptions": []}},
        "state": {},
    }
    full_scope.update(scope or {})
    ws = WebSocketTestClient(application or get_application(), full_scope, timeout, raise_app_exceptions)
    await ws._handshake()
    try:
        yield ws
    finally:
        await ws.close()
