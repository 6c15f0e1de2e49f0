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
import collections
import enum
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from importlib import import_module
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

from django.apps import apps
from django.test import TransactionTestCase, modify_settings

from .asgi import TetherASGIHandler
from .codes import CloseCode
from .exceptions import Disconnected

__all__ = [
    "LiveServer",
    "Rejected",
    "TetherLiveServerTestCase",
    "WebSocketTestClient",
    "connect",
    "get_application",
    "live_server",
    "session_cookie",
]

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


class _Phase(enum.Enum):
    """Where the connection is, as the ASGI server sees it (what it lets the application send next)."""

    HANDSHAKE = "handshake"  # before websocket.accept / websocket.close / websocket.http.response.start
    OPEN = "open"
    RESPONSE = "response"  # a denial response started; only its body may follow
    CLOSED = "closed"


class WebSocketTestClient:
    """The client side of one in-process connection, returned by ``connect()``.

    It plays the server strictly, as uvicorn does: an ASGI message a real
    server would refuse (a send before the accept or after the close, a
    second accept, an unknown type) raises ``RuntimeError`` in the
    application's ``send`` and again in the test, even if the application
    swallowed it.
    """

    def __init__(self, application: Any, scope: dict[str, Any], timeout: float, raise_app_exceptions: bool) -> None:
        self.scope = scope
        self.timeout = timeout
        self.raise_app_exceptions = raise_app_exceptions
        self.subprotocol: str | None = None
        self.accept_headers: dict[str, str] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: collections.deque[dict[str, Any]] = collections.deque()
        self._arrived = asyncio.Event()
        self._phase = _Phase.HANDSHAKE
        self._violations: list[RuntimeError] = []
        self._client_gone = False
        self._exceptions: list[BaseException] = scope["extensions"]["tether.testing"]["exceptions"]
        self._task = asyncio.create_task(application(scope, self._app_receive, self._app_send))

    async def _app_receive(self) -> dict[str, Any]:
        return await self._to_app.get()

    async def _app_send(self, message: dict[str, Any]) -> None:
        error = self._violation(message)  # first: a message after the app's own close is a bug, however timed
        if error is not None:
            self._violations.append(error)
            self._arrived.set()  # wakes a waiting receive*, which raises it
            raise error
        if self._client_gone:
            raise OSError("the test client has disconnected")  # what ASGI servers do (uvicorn: ClientDisconnected)
        self._from_app.append(message)
        self._arrived.set()

    def _violation(self, message: Mapping[str, Any]) -> RuntimeError | None:
        """What uvicorn would raise for ``message`` in the current phase (None: it is allowed); advances the phase."""
        kind = message.get("type")
        phase = self._phase
        if phase is _Phase.HANDSHAKE:
            if kind == "websocket.accept":
                self._phase = _Phase.OPEN
            elif kind == "websocket.close":
                self._phase = _Phase.CLOSED
            elif kind == "websocket.http.response.start" and "websocket.http.response" in self.scope["extensions"]:
                if not 100 <= int(message.get("status", 0)) < 600:
                    return RuntimeError(f"Invalid HTTP status code '{message.get('status')}' in response.")
                self._phase = _Phase.RESPONSE
            else:
                return RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' "
                    f"or 'websocket.http.response.start' but got '{kind}'."
                )
        elif phase is _Phase.OPEN:
            if kind == "websocket.close":
                self._phase = _Phase.CLOSED
            elif kind != "websocket.send":
                return RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'.")
        elif phase is _Phase.RESPONSE:
            if kind != "websocket.http.response.body":
                return RuntimeError(f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'.")
            if not message.get("more_body", False):
                self._phase = _Phase.CLOSED
        else:
            return RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")
        return None

    def _raise_violation(self) -> None:
        if self._violations:  # raised whatever raise_app_exceptions says: the application broke the protocol
            raise self._violations.pop(0)

    def _raise_app_exception(self) -> None:
        self._raise_violation()
        if self._exceptions and self.raise_app_exceptions:
            raise self._exceptions.pop(0)

    async def _wait_for_message(self, timeout: float) -> bool:
        """Wait until the app has sent something or returned; False if ``timeout`` passed first.

        Cancelling the wait (``asyncio.wait_for`` around a ``receive*``) loses no message:
        messages stay queued until taken.
        """
        if self._from_app or self._violations or self._task.done():
            return True
        self._arrived.clear()
        waiter = asyncio.ensure_future(self._arrived.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return bool(done)

    async def _next(self, timeout: float | None = None) -> dict[str, Any]:
        """The app's next message, or the app's own exception, within ``timeout`` (default: the client's)."""
        timeout = self.timeout if timeout is None else timeout
        if not await self._wait_for_message(timeout):
            raise TimeoutError(f"the application sent nothing within {timeout}s")
        self._raise_violation()
        if self._from_app:
            return self._from_app.popleft()
        if not self._task.cancelled():
            self._task.result()  # raises what escaped the application
        self._raise_app_exception()
        raise AssertionError("the application finished without closing the socket")

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
        assert kind == "websocket.http.response.start", kind  # _violation() let nothing else through
        body = b""
        while True:
            part = await self._next()
            body += part.get("body", b"")
            if not part.get("more_body"):
                break
        await self._finish()
        self._raise_app_exception()
        head = body.split(b" ", 1)[0]  # tether's refusals start their body with the close code
        raise Rejected(int(head) if head.isdigit() else None, status=int(message["status"]), body=body)

    # -- talking to the application -----------------------------------------

    async def send_message(self, message: dict[str, Any]) -> None:
        """Hand a raw ASGI event to the application (for protocol-level tests)."""
        await self._to_app.put(message)

    async def send_text(self, data: str) -> None:
        """Send a text message to the application, as a browser would."""
        await self.send_message({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message to the application."""
        await self.send_message({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any) -> None:
        """Send ``data`` encoded as JSON in one text message."""
        await self.send_text(json.dumps(data))

    async def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message the application sent; ``Disconnected`` if it closed instead.

        Waits at most ``timeout`` seconds (default: ``connect()``'s), then raises
        ``TimeoutError``. Safe to cancel: a message that arrives later is kept
        for the next ``receive*``.
        """
        if self.close_code is not None:
            raise Disconnected(self.close_code, self.close_reason)
        message = await self._next(timeout)
        self._raise_violation()
        if message["type"] == "websocket.close":
            self.close_code = int(message.get("code", CloseCode.NORMAL_CLOSURE))
            self.close_reason = message.get("reason") or ""
            await self._finish()
            self._raise_app_exception()
            raise Disconnected(self.close_code, self.close_reason)
        text = message.get("text")
        return text if text is not None else bytes(message["bytes"])

    async def receive_text(self, timeout: float | None = None) -> str:
        """The next message, which must be text (``AssertionError`` otherwise); see ``receive()``."""
        data = await self.receive(timeout)
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        return data

    async def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next message, which must be binary (``AssertionError`` otherwise); see ``receive()``."""
        data = await self.receive(timeout)
        assert isinstance(data, bytes), f"expected a binary frame, got {data!r}"
        return data

    async def receive_json(self, timeout: float | None = None) -> Any:
        """The next message, which must be text, decoded as JSON; see ``receive()``."""
        return json.loads(await self.receive_text(timeout))

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        """True if the application sends nothing (no message, no close) within ``timeout`` seconds.

        Takes nothing: a message that did arrive is left for the next ``receive*``.
        As in Channels, a short wait proves little on its own; where you can, make
        the application send a sentinel after the thing that must not arrive, and
        assert that the sentinel comes first.
        """
        for _ in range(10):  # let the tasks already runnable (the handler, the hub's writer) run first
            await asyncio.sleep(0)
        if self._from_app:
            return False
        await self._wait_for_message(timeout)
        self._raise_violation()
        return not self._from_app and not self._task.done()

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

    ``path`` is written as a browser sends it, percent-encoded or not
    ("/ws/chat/hello%20world/", "/ws/chat/café/"): the scope's ``path`` is
    decoded once and ``raw_path`` keeps the encoding, as under a real server.

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
    raw_path = quote(parts.path, safe="/%:@!$&'()*+,;=-._~")  # a path given encoded stays as it is
    full_scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": scheme,
        "http_version": "1.1",
        "path": unquote(raw_path),  # ASGI: path decoded, raw_path as sent
        "raw_path": raw_path.encode("ascii"),
        "root_path": "",
        "query_string": quote(parts.query, safe="/%:@!$&'()*+,;=-._~?").encode("ascii"),
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


# -- a live server, for browser tests -----------------------------------------


class LiveServer:
    """uvicorn serving the project (HTTP, WebSockets, static files) from a thread of the test process.

    What Channels' ``ChannelsLiveServerTestCase`` runs, for tests that drive a
    real client: a browser (Playwright, Selenium) or the ``websockets`` library.
    The server runs the real ASGI application with lifespan, so the hub starts
    and stops as in production; handlers see the test settings and database.
    Use ``live_server()`` or ``TetherLiveServerTestCase`` rather than this class.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, static: bool = True, timeout: float = 10.0) -> None:
        self.host, self.timeout = host, timeout
        self._socket = socket.create_server((host, port))
        self.port: int = self._socket.getsockname()[1]
        self._static = static
        self._ready = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._allowed_host: modify_settings | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (like ``LiveServerTestCase.live_server_url``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port``: prefix a websocket route's path with it."""
        return f"ws://{self.host}:{self.port}"

    def _application(self) -> TetherASGIHandler:
        http: Any = None
        if self._static and apps.is_installed("django.contrib.staticfiles"):
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
            from django.core.handlers.asgi import ASGIHandler

            http = ASGIStaticFilesHandler(ASGIHandler())
        return TetherASGIHandler(http)

    def start(self) -> None:
        """Start serving; returns once the server answers (lifespan startup done). Raises if it can't start."""
        import uvicorn  # an optional dependency (tether[server]); only live-server tests need it
        from uvicorn.config import WS_PROTOCOLS

        ready = self._ready

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                try:
                    await super().startup(sockets)
                finally:
                    ready.set()

        # As Django's LiveServerTestCase does: the server's host is allowed (Host header and Origin check).
        self._allowed_host = modify_settings(ALLOWED_HOSTS={"append": self.host})
        self._allowed_host.enable()
        ws = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "auto"
        config = uvicorn.Config(self._application(), lifespan="on", ws=ws, log_level="warning")
        self._server = Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._server.serve([self._socket]),), name="tether-live-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(self.timeout) or not self._server.started:
            self.stop()
            raise RuntimeError(f"the live server did not start within {self.timeout}s (see the log above)")

    def stop(self) -> None:
        """Stop serving (open sockets are closed, lifespan shutdown runs) and wait for the thread. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.timeout)
            self._thread = None
        if self._allowed_host is not None:
            self._allowed_host.disable()
            self._allowed_host = None
        self._socket.close()


@contextmanager
def live_server(host: str = "127.0.0.1", port: int = 0, *, static: bool = True) -> Iterator[LiveServer]:
    """Serve the project with uvicorn in a thread for the with-block (pytest: wrap it in a fixture).

    ::

        with live_server() as server:
            async with websockets.connect(f"{server.ws_url}/ws/echo/") as ws: ...
            page.goto(f"{server.url}/rooms/lobby/")   # Playwright

    Handlers run in this process against the test database, so the database must
    be reachable from the server's threads: PostgreSQL, or SQLite in a file
    (pytest-django: ``@pytest.mark.django_db(transaction=True)``, as for Django's
    own ``LiveServerTestCase``).
    """
    server = LiveServer(host, port, static=static)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TetherLiveServerTestCase(TransactionTestCase):
    """``TransactionTestCase`` with the project served live by uvicorn (HTTP and WebSockets) for the class.

    The replacement for Channels' ``ChannelsLiveServerTestCase``:
    ``live_server_url`` (``http://...``) and ``live_server_ws_url`` (``ws://...``)
    point at the server; static files are served when ``django.contrib.staticfiles``
    is installed (``serve_static = False`` to turn off).
    """

    host = "127.0.0.1"
    port = 0
    serve_static = True
    server: ClassVar[LiveServer]
    live_server_url: ClassVar[str]
    live_server_ws_url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        """Start the server once for the class (after the class's ``override_settings``)."""
        super().setUpClass()
        cls.server = LiveServer(cls.host, cls.port, static=cls.serve_static)
        try:
            cls.server.start()
        except Exception:
            super().tearDownClass()
            raise
        cls.live_server_url, cls.live_server_ws_url = cls.server.url, cls.server.ws_url

    @classmethod
    def tearDownClass(cls) -> None:
        """Stop the server: open sockets are closed and the lifespan shutdown runs."""
        cls.server.stop()
        super().tearDownClass()
