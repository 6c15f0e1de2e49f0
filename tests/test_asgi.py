"""The ASGI entry point: dispatch by scope type, lifespan, shutdown closes sockets with 1001."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tether import CloseCode
from tether.asgi import _UNFINISHED_HANDSHAKE, RefusalIsNotAnError, TetherASGIHandler, get_asgi_application
from tether.testing import Rejected, connect


class Lifespan:
    """Drives an application's lifespan protocol from a test."""

    def __init__(self, app: TetherASGIHandler) -> None:
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(app({"type": "lifespan"}, self.to_app.get, self.from_app.put))

    async def event(self, kind: str) -> dict[str, Any]:
        await self.to_app.put({"type": f"lifespan.{kind}"})
        return await asyncio.wait_for(self.from_app.get(), 3)


async def test_lifespan_startup_and_shutdown_complete() -> None:
    """startup and shutdown are answered with .complete, and the lifespan task ends."""
    app = TetherASGIHandler()
    lifespan = Lifespan(app)
    assert (await lifespan.event("startup"))["type"] == "lifespan.startup.complete"
    assert (await lifespan.event("shutdown"))["type"] == "lifespan.shutdown.complete"
    await asyncio.wait_for(lifespan.task, 3)


async def test_shutdown_closes_open_sockets_with_1001() -> None:
    """Sockets still open at shutdown are closed with 1001 (going away)."""
    app = TetherASGIHandler()
    lifespan = Lifespan(app)
    await lifespan.event("startup")
    async with connect("/ws/echo/", application=app) as one, connect("/ws/chat/r/", application=app) as two:
        await two.receive_json()
        assert len(app.websocket.sockets) == 2
        assert (await lifespan.event("shutdown"))["type"] == "lifespan.shutdown.complete"
        assert await one.wait_closed() == CloseCode.GOING_AWAY
        assert await two.wait_closed() == CloseCode.GOING_AWAY
    assert not app.websocket.sockets


async def test_failed_startup_is_reported() -> None:
    """An exception at startup answers lifespan.startup.failed with its message."""

    class Broken(TetherASGIHandler):
        async def startup(self) -> None:
            raise RuntimeError("backend down")

    lifespan = Lifespan(Broken())
    answer = await lifespan.event("startup")
    assert answer == {"type": "lifespan.startup.failed", "message": "backend down"}


async def test_http_goes_to_django() -> None:
    """An http scope is served by Django, including the 426 view of a websocket route."""
    app = get_asgi_application()
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return await inbox.get()  # then blocks: the client never disconnects

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ws/echo/",
        "raw_path": b"/ws/echo/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 426


async def test_unknown_scope_type_raises() -> None:
    """A scope type tether doesn't know is a ValueError, not silence."""

    async def never() -> dict[str, Any]:
        raise AssertionError

    with pytest.raises(ValueError, match="'webtransport'"):
        await TetherASGIHandler()({"type": "webtransport"}, never, never)  # type: ignore[arg-type]


async def test_cancelled_handler_closes_1001() -> None:
    """A server cancelling a handler (its own shutdown) makes tether close the socket with 1001."""
    app = TetherASGIHandler()
    async with connect("/ws/echo/", application=app) as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"
        ws._task.cancel()
        assert await ws.wait_closed() == CloseCode.GOING_AWAY
    assert not app.websocket.sockets


async def test_refusal_filter_drops_the_false_error_only_after_a_refusal() -> None:
    """RefusalIsNotAnError drops uvicorn's "without completing handshake" only for a connection refused with a response."""
    app = TetherASGIHandler()
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, _UNFINISHED_HANDSHAKE, None, None)
    kept: list[bool] = []

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        await app._serve_noting_refusal(scope, receive, send)
        kept.append(RefusalIsNotAnError().filter(record))  # as uvicorn logs it: in the app's task, after it returned

    with pytest.raises(Rejected):
        async with connect("/ws/nope/", application=probe):
            pass
    async with connect("/ws/echo/", application=probe):
        pass
    assert kept == [False, True]
    assert RefusalIsNotAnError().filter(record)  # and outside any connection
    assert any(isinstance(f, RefusalIsNotAnError) for f in logging.getLogger("uvicorn.error").filters)
