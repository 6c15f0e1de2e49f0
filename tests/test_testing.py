"""tether.testing.connect: handshake outcomes, timeouts, raw events, exceptions."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import pytest
from django.test import override_settings

from tether import CloseCode, WebSocket
from tether.testing import Rejected, connect
from tether.urls import websocket


async def test_rejected_handshake_raises_rejected() -> None:
    """A handler that never accepts makes connect() raise Rejected with status 403."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/refuse/"):
            pass
    assert info.value.status == 403 and info.value.code == CloseCode.NORMAL_CLOSURE


async def test_subprotocol_and_accept_headers_are_reported() -> None:
    """The accepted subprotocol and accept headers are visible on the client."""
    async with connect("/ws/info/1/", subprotocols=["chat.v2", "chat.v1"]) as ws:
        info = await ws.receive_json()
        assert ws.subprotocol == "chat.v2"
        assert ws.accept_headers == {"x-tether": "1"}
        assert info["subprotocols"] == ["chat.v2", "chat.v1"]


async def test_receive_times_out_with_a_clear_message() -> None:
    """Waiting for a message the app never sends fails after the timeout, naming it."""
    async with connect("/ws/echo/", timeout=0.2) as ws:
        with pytest.raises(TimeoutError, match=r"sent nothing within 0.2s"):
            await ws.receive()


async def test_app_exception_before_accept_is_raised() -> None:
    """An exception in a handler before accept() reaches the test, not just a 403."""
    with override_settings(ROOT_URLCONF="tests.urls_crash"), pytest.raises(KeyError, match="missing"):
        async with connect("/crash/"):
            pass


async def test_raw_events_can_be_sent() -> None:
    """send_message() hands raw ASGI events over, e.g. a text frame."""
    async with connect("/ws/echo/") as ws:
        await ws.send_message({"type": "websocket.receive", "text": "ping"})
        assert await ws.receive_text() == "pong!"


async def test_a_timed_out_receive_loses_no_message() -> None:
    """asyncio.wait_for(ws.receive_json(), ...) timing out leaves no read behind to swallow the next message."""
    async with connect("/ws/json/") as ws:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive_json(), 0.05)
        receiving = asyncio.ensure_future(ws.receive_json())  # waiting before the message exists, as for a broadcast
        for _ in range(5):
            await asyncio.sleep(0)  # no timing: lets the new read start waiting
        await ws.send_json({"n": 1})
        assert await receiving == {"echo": {"n": 1}}


async def test_receive_takes_a_timeout_of_its_own() -> None:
    """receive*(timeout=...) bounds one wait without changing the client's default."""
    async with connect("/ws/echo/") as ws:
        with pytest.raises(TimeoutError, match=r"within 0.05s"):
            await ws.receive_text(timeout=0.05)
        assert ws.timeout == 3.0


@pytest.mark.parametrize(("path", "group"), [("/ws/group/hello%20world/", "hello world"), ("/ws/group/café/", "café")])
async def test_a_percent_encoded_or_unicode_path_reaches_the_route_decoded(path: str, group: str) -> None:
    """The scope's path is decoded once (raw_path keeps the encoding): a room "hello world" or "café" works."""
    async with connect(path) as ws:
        assert await ws.receive_json() == {"joined": group}
        assert ws.scope["raw_path"] == quote(group).join([b"/ws/group/".decode(), "/"]).encode()
        await ws.send_json({"broadcast": {"to": "everyone in " + group}})
        assert await ws.receive_json() == {"to": "everyone in " + group}


async def test_receive_nothing_is_true_when_nothing_comes_and_keeps_what_does() -> None:
    """receive_nothing() says whether a message came, and leaves one that did for receive*()."""
    async with connect("/ws/echo/") as ws:
        assert await ws.receive_nothing(timeout=0.05) is True
        await ws.send_text("ping")
        assert await ws.receive_nothing(timeout=3) is False
        assert await ws.receive_text() == "pong!"


async def raw_app(scope: dict[str, Any], receive: Any, send: Any, steps: list[dict[str, Any]]) -> None:
    """A bare ASGI app that takes the connect, then sends ``steps`` one after the other."""
    assert (await receive())["type"] == "websocket.connect"
    for message in steps:
        try:
            await send(message)
        except RuntimeError:
            pass  # swallowed, as tether's own close path does: the client must still report it
    await receive()


ACCEPT = {"type": "websocket.accept"}
CLOSE = {"type": "websocket.close", "code": 1000}
SEND = {"type": "websocket.send", "text": "x"}


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ([ACCEPT, CLOSE, SEND], "Unexpected ASGI message 'websocket.send', after sending 'websocket.close'"),
        ([ACCEPT, ACCEPT], "Expected ASGI message 'websocket.send' or 'websocket.close', but got 'websocket.accept'"),
        ([SEND], "Expected ASGI message 'websocket.accept', 'websocket.close' or 'websocket.http.response.start'"),
        ([ACCEPT, {"type": "websocket.pong"}], "but got 'websocket.pong'"),
    ],
    ids=["send-after-close", "accept-twice", "send-before-accept", "unknown-type"],
)
async def test_the_client_rejects_what_uvicorn_rejects(steps: list[dict[str, Any]], error: str) -> None:
    """An ASGI message a real server refuses raises RuntimeError in the app's send and in the test."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await raw_app(scope, receive, send, steps)

    with pytest.raises(RuntimeError, match=re.escape(error)):
        async with connect("/ws/echo/", application=app) as ws:
            await ws.wait_closed()


async def _late_sender(socket: WebSocket) -> None:
    await socket.accept()
    await socket.close()
    try:
        await socket._send({"type": "websocket.send", "text": "late"})  # what a racing writer would do
    except RuntimeError as exc:
        SENT_AFTER_CLOSE.append(exc)


SENT_AFTER_CLOSE: list[BaseException] = []
urlpatterns = [websocket("late/", _late_sender)]


async def test_the_client_catches_a_handler_sending_after_its_close() -> None:
    """A handler whose send goes out after its own close (the hub-writer race) fails the test with RuntimeError."""
    SENT_AFTER_CLOSE.clear()
    with (
        override_settings(ROOT_URLCONF=__name__),
        pytest.raises(RuntimeError, match=re.escape("after sending 'websocket.close'")),
    ):
        async with connect("/late/") as ws:
            await ws.wait_closed()
    assert len(SENT_AFTER_CLOSE) == 1  # the application saw it too, as under uvicorn


async def test_a_denial_response_body_must_follow_its_start() -> None:
    """After websocket.http.response.start only its body may come; anything else is refused."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
        await raw_app(scope, receive, send, [start, CLOSE, {"type": "websocket.http.response.body", "body": b"no"}])

    with pytest.raises(
        RuntimeError, match=re.escape("Expected ASGI message 'websocket.http.response.body' but got 'websocket.close'")
    ):
        async with connect("/ws/echo/", application=app):
            pass
