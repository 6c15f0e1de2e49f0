"""The WebSocket connection object: state machine, typed receive/send, handshake data."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import uuid
from typing import Any

import pytest

from tether import CloseCode, ConnectionState, Disconnected, InvalidMessage, InvalidState, WebSocket
from tether.testing import connect


class FakeServer:
    """The server side of ASGI for unit tests: scripted events in, sent messages recorded."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.events = list(events)
        self.sent: list[dict[str, Any]] = []
        self.fail_sends = False

    async def receive(self) -> dict[str, Any]:
        return self.events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail_sends:
            raise OSError("client gone")
        self.sent.append(message)

    def socket(self, **scope: Any) -> WebSocket:
        base = {"type": "websocket", "path": "/ws/", "headers": [], "query_string": b"", "subprotocols": []}
        return WebSocket(base | scope, self.receive, self.send)


CONNECT = {"type": "websocket.connect"}


async def test_send_before_accept_raises_with_the_fix() -> None:
    """Sending before accept() raises InvalidState naming accept()."""
    socket = FakeServer(CONNECT).socket()
    with pytest.raises(InvalidState, match=r"call await socket.accept\(\) first"):
        await socket.send_text("hi")
    with pytest.raises(InvalidState, match="accept"):
        await socket.receive()


async def test_accept_twice_raises() -> None:
    """A second accept() is a bug and says so."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    assert socket.connection_state is ConnectionState.OPEN
    with pytest.raises(InvalidState, match="once"):
        await socket.accept()


async def test_accept_sends_subprotocol_and_headers() -> None:
    """accept() passes the chosen subprotocol and lower-cased headers to the server."""
    server = FakeServer(CONNECT)
    socket = server.socket(subprotocols=["v2", "v1"])
    await socket.accept("v1", headers={"X-Thing": "yes"})
    assert server.sent == [{"type": "websocket.accept", "subprotocol": "v1", "headers": [(b"x-thing", b"yes")]}]


async def test_accept_unoffered_subprotocol_is_refused() -> None:
    """Choosing a subprotocol the client did not offer raises before anything is sent."""
    server = FakeServer(CONNECT)
    with pytest.raises(ValueError, match="not offered"):
        await server.socket(subprotocols=["a"]).accept("b")
    assert server.sent == []


async def test_receive_after_close_raises_invalid_state() -> None:
    """After the app closed, receive() and send() raise InvalidState, close() is a no-op."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    await socket.close(CloseCode.GOING_AWAY, "bye")
    await socket.close()  # idempotent
    assert server.sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "bye"}
    assert len(server.sent) == 2
    with pytest.raises(InvalidState, match="after close"):
        await socket.receive()
    with pytest.raises(InvalidState, match="after close"):
        await socket.send_text("x")


async def test_peer_disconnect_raises_disconnected_every_time() -> None:
    """Once the client left, receive() and send() raise Disconnected with its code, repeatedly."""
    server = FakeServer(CONNECT, {"type": "websocket.disconnect", "code": 1001, "reason": "tab closed"})
    socket = server.socket()
    await socket.accept()
    for _ in range(2):
        with pytest.raises(Disconnected) as info:
            await socket.receive()
        assert (info.value.code, info.value.reason) == (1001, "tab closed")
    with pytest.raises(Disconnected):
        await socket.send_text("late")


async def test_send_to_gone_client_raises_disconnected() -> None:
    """A server's OSError on send becomes Disconnected(1006)."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    server.fail_sends = True
    with pytest.raises(Disconnected) as info:
        await socket.send_text("x")
    assert info.value.code == CloseCode.ABNORMAL_CLOSURE
    assert socket.connection_state is ConnectionState.CLOSED


async def test_close_before_accept_refuses_handshake() -> None:
    """close() in CONNECTING takes the connect event and sends a close (the server answers 403)."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.close(CloseCode.FORBIDDEN)
    assert server.sent == [{"type": "websocket.close", "code": 4403, "reason": ""}]


async def test_close_reason_is_truncated_to_fit_a_frame() -> None:
    """A close reason longer than 123 bytes is cut, never split inside a character."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    await socket.close(1000, "é" * 100)
    reason = server.sent[-1]["reason"]
    assert len(reason.encode()) <= 123 and set(reason) == {"é"}


async def test_wrong_send_types_raise_type_error() -> None:
    """The classic wrong send() call gets a TypeError naming the right method."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    with pytest.raises(TypeError, match="send_bytes"):
        await socket.send_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="send_text"):
        await socket.send_bytes("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="send_json"):
        await socket.send_text({"type": "websocket.send", "text": "hi"})  # type: ignore[arg-type]


async def test_frame_kind_mismatch_raises_invalid_message() -> None:
    """receive_text() on a binary frame and receive_bytes() on text raise InvalidMessage(1003)."""
    server = FakeServer(
        CONNECT, {"type": "websocket.receive", "bytes": b"\x00"}, {"type": "websocket.receive", "text": "t"}
    )
    socket = server.socket()
    await socket.accept()
    with pytest.raises(InvalidMessage) as info:
        await socket.receive_text()
    assert info.value.code == CloseCode.UNSUPPORTED_DATA
    with pytest.raises(InvalidMessage):
        await socket.receive_bytes()


def test_websocket_needs_a_websocket_scope() -> None:
    """Building a WebSocket from an http scope is refused."""
    server = FakeServer()
    with pytest.raises(ValueError, match="'websocket' scope"):
        WebSocket({"type": "http"}, server.receive, server.send)


def test_handshake_properties() -> None:
    """headers are case-insensitive and merged; cookies and query_params are parsed."""
    socket = FakeServer().socket(
        headers=[(b"cookie", b"a=1; b=two"), (b"x-many", b"1"), (b"X-Many", b"2")],
        query_string=b"token=abc&x=1&x=2",
        client=("10.0.0.1", 1234),
    )
    assert socket.headers["X-MANY"] == "1, 2"
    assert socket.cookies == {"a": "1", "b": "two"}
    assert socket.query_params["token"] == "abc"
    assert socket.query_params.getlist("x") == ["1", "2"]
    assert socket.client == ("10.0.0.1", 1234)
    assert socket.kwargs == {}


async def test_json_round_trip_uses_django_encoder() -> None:
    """send_json encodes dates, UUIDs and Decimals with DjangoJSONEncoder."""
    async with connect("/ws/json/") as ws:
        uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
        await ws.send_json({"n": 1})
        assert await ws.receive_json() == {"echo": {"n": 1}}
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    await socket.send_json({"d": datetime.date(2026, 1, 2), "u": uid, "x": decimal.Decimal("1.50"), "s": "ü"})
    assert server.sent[-1]["text"] == '{"d":"2026-01-02","u":"12345678-1234-5678-1234-567812345678","x":"1.50","s":"ü"}'


async def test_malformed_json_closes_1007() -> None:
    """Invalid JSON to receive_json(), uncaught, closes with 1007 and logs a warning."""
    async with connect("/ws/json/") as ws:
        await ws.send_text("{not json")
        with pytest.raises(Disconnected) as info:
            await ws.receive()
        assert info.value.code == CloseCode.INVALID_DATA
        assert "malformed JSON" in info.value.reason


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}'])
async def test_nan_and_infinity_are_malformed_json(text: str) -> None:
    """Python's json reads NaN and Infinity; JSON has neither, so they close with 1007 like any malformed frame."""
    async with connect("/ws/json/") as ws:
        await ws.send_text(text)
        with pytest.raises(Disconnected) as info:
            await ws.receive()
        assert info.value.code == CloseCode.INVALID_DATA
        assert "is not JSON" in info.value.reason


async def test_malformed_json_can_be_caught() -> None:
    """A handler that catches InvalidMessage keeps the connection."""
    async with connect("/ws/caught/") as ws:
        await ws.send_text("{oops")
        assert "malformed JSON" in (await ws.receive_json())["error"]
        await ws.send_json([1, 2])
        assert await ws.receive_json() == [1, 2]


async def test_binary_frame_to_text_handler_closes_1003() -> None:
    """A binary frame to iter_text() closes with 1003 (unsupported data)."""
    async with connect("/ws/echo/") as ws:
        await ws.send_bytes(b"\xff")
        assert await ws.wait_closed() == CloseCode.UNSUPPORTED_DATA


async def test_iter_ends_quietly_on_disconnect() -> None:
    """iter_text() ends without raising when the client leaves; the handler returns."""
    async with connect("/ws/echo/") as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"
        await ws.close()
        assert ws._task.done() and ws._task.exception() is None


async def test_concurrent_close_is_safe() -> None:
    """close() from two tasks at once sends a single close frame."""
    server = FakeServer(CONNECT)
    socket = server.socket()
    await socket.accept()
    await asyncio.gather(socket.close(1000), socket.close(1001))
    assert [m["type"] for m in server.sent].count("websocket.close") == 1
