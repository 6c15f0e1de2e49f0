"""SocketView: hooks, dispatch of frames, error handling, disconnect()."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.testapp.sockets import Room
from tether import CloseCode, Disconnected, SocketView
from tether.testing import Rejected, connect


@pytest.fixture(autouse=True)
def _reset_disconnects() -> None:
    Room.disconnects.clear()


async def test_json_and_bytes_reach_their_hooks() -> None:
    """Text frames go through receive() -> receive_json(); binary frames to receive_bytes()."""
    async with connect("/ws/chat/lobby/") as ws:
        assert (await ws.receive_json())["room"] == "lobby"
        await ws.send_json({"text": "hi"})
        assert await ws.receive_json() == {"room": "lobby", "data": {"text": "hi"}}
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes() == b"ABC"
    assert Room.disconnects == [("lobby", CloseCode.NORMAL_CLOSURE)]


async def test_overriding_receive_takes_raw_text() -> None:
    """A view overriding receive() gets raw text, not JSON."""
    async with connect("/ws/text/") as ws:
        await ws.send_text("not json")
        assert await ws.receive_text() == "NOT JSON"


async def test_unhandled_frame_kinds_close_1003(caplog: pytest.LogCaptureFixture) -> None:
    """A view without receive_json/receive_bytes closes with 1003 and says which view."""
    with caplog.at_level(logging.WARNING, logger="tether"):
        async with connect("/ws/silent/") as ws:
            await ws.send_text("{}")
            assert await ws.wait_closed() == CloseCode.UNSUPPORTED_DATA
        async with connect("/ws/silent/") as ws:
            await ws.send_bytes(b"x")
            assert await ws.wait_closed() == CloseCode.UNSUPPORTED_DATA
    assert "Silent takes no text messages" in caplog.text
    assert "Silent takes no binary messages" in caplog.text


async def test_hook_exception_closes_1011_and_is_raised_in_test() -> None:
    """By default the test client re-raises the handler's exception."""
    with pytest.raises(ValueError, match="crash requested"):
        async with connect("/ws/chat/lobby/") as ws:
            await ws.receive_json()
            await ws.send_json({"crash": True})
            await ws.receive()


async def test_hook_exception_is_logged_and_others_keep_working(caplog: pytest.LogCaptureFixture) -> None:
    """A crash closes that socket with 1011, logs the traceback, calls disconnect(1011); others go on."""
    with caplog.at_level(logging.ERROR, logger="tether"):
        async with connect("/ws/chat/a/", raise_app_exceptions=False) as bad, connect("/ws/chat/b/") as good:
            await bad.receive_json()
            await good.receive_json()
            await bad.send_json({"crash": True})
            assert await bad.wait_closed() == CloseCode.INTERNAL_ERROR
            await good.send_json({"still": "here"})
            assert await good.receive_json() == {"room": "b", "data": {"still": "here"}}
    assert "ValueError: crash requested" in caplog.text  # the traceback
    assert ("a", CloseCode.INTERNAL_ERROR) in Room.disconnects


async def test_connect_that_closes_refuses_and_still_calls_disconnect() -> None:
    """connect() closing instead of accepting refuses the handshake; disconnect() runs once."""
    with pytest.raises(Rejected):
        async with connect("/ws/chat/closed/"):
            pass
    assert Room.disconnects == [("closed", CloseCode.NORMAL_CLOSURE)]


async def test_client_disconnect_calls_disconnect_with_its_code() -> None:
    """disconnect() receives the client's close code."""
    async with connect("/ws/chat/x/") as ws:
        await ws.receive_json()
        await ws.close(CloseCode.GOING_AWAY)
    assert Room.disconnects == [("x", CloseCode.GOING_AWAY)]


async def test_as_handler_rejects_unknown_initkwargs() -> None:
    """as_handler() accepts only existing class attributes, like Django's as_view()."""
    with pytest.raises(TypeError, match="not an attribute"):
        Room.as_handler(nope=1)
    handler = Room.as_handler(greeting="hey")
    assert handler.view_class is Room  # type: ignore[attr-defined]
    assert handler.__name__ == "Room"


async def test_disconnect_exception_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in disconnect() is logged; it doesn't escape the application."""

    class BadExit(SocketView):
        async def disconnect(self, code: int) -> None:
            raise RuntimeError("disconnect failed")

    from tether.routing import SERVICES, WebSocketRouter

    router = WebSocketRouter()
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    sent: list[dict[str, object]] = []
    for event in ({"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}):
        queue.put_nowait(event)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    from tether.websocket import WebSocket

    socket = WebSocket({"type": "websocket", "path": "/x/"}, queue.get, send, services=SERVICES)
    with caplog.at_level(logging.ERROR, logger="tether"):
        await router.serve(socket, BadExit.as_handler())
    assert "BadExit.disconnect() raised" in caplog.text
    assert sent[0]["type"] == "websocket.accept"
    assert not router.sockets


async def test_receive_after_the_client_left_raises_disconnected() -> None:
    """After the client leaves, the test client's receive raises Disconnected with the code."""
    async with connect("/ws/echo/") as ws:
        await ws.close(1001)
        with pytest.raises(Disconnected) as info:
            await ws.receive()
        assert info.value.code == 1001
