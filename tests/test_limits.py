"""Limits tether enforces itself: message size, message rate, idle time, handshake time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from django.test import override_settings
from websockets.exceptions import ConnectionClosed

from tests.servers import Server, serve
from tether import CloseCode, Disconnected, WebSocket
from tether.asgi import TetherASGIHandler
from tether.testing import connect
from tether.websocket import _size

MIB = 1024 * 1024


def test_size_counts_utf8_bytes() -> None:
    """Messages are measured in bytes: UTF-8 for text, lone surrogates included."""
    assert _size("a" * 10) == 10
    assert _size("é" * 30) == 60
    assert _size(b"\x00" * 7) == 7
    assert _size("\udc80") == 3  # a lone surrogate counts without raising


async def test_oversized_text_closes_1009_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A text message one byte over MAX_MESSAGE_SIZE closes with 1009; exactly the limit passes."""
    async with connect("/ws/echo/") as ws:
        await ws.send_text("x" * MIB)
        assert len(await ws.receive_text()) == MIB
        await ws.send_text("é" * (MIB // 2) + "x")  # MIB // 2 characters, MIB + 1 bytes
        assert await ws.wait_closed() == CloseCode.MESSAGE_TOO_BIG
    assert ws.close_reason == "message too big"
    [record] = [r for r in caplog.records if r.name == "tether.limits"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "Closing websocket /ws/echo/ for user -: message of 1048577 bytes is over MAX_MESSAGE_SIZE=1048576 (closed 1009)"
    )


async def test_oversized_bytes_close_1009_with_a_custom_limit() -> None:
    """The limit applies to binary frames too, and follows the setting."""
    with override_settings(TETHER={"MAX_MESSAGE_SIZE": 10}):
        async with connect("/ws/bytes/") as ws:
            await ws.send_bytes(b"0123456789")
            assert await ws.receive_bytes() == b"9876543210"
            await ws.send_bytes(b"0123456789A")
            assert await ws.wait_closed() == CloseCode.MESSAGE_TOO_BIG


async def test_no_size_limit_when_set_to_none() -> None:
    """MAX_MESSAGE_SIZE None lets any size through (the server's own limit still applies)."""
    with override_settings(TETHER={"MAX_MESSAGE_SIZE": None}):
        async with connect("/ws/echo/") as ws:
            await ws.send_text("x" * (2 * MIB))
            assert len(await ws.receive_text()) == 2 * MIB


async def test_message_rate_over_the_burst_closes_1008(caplog: pytest.LogCaptureFixture) -> None:
    """With a token bucket of 3 and a negligible refill, the 4th message closes with 1008."""
    with override_settings(TETHER={"MESSAGE_RATE": 0.001, "MESSAGE_BURST": 3}):
        async with connect("/ws/echo/") as ws:
            for n in range(3):
                await ws.send_text(str(n))
                assert await ws.receive_text() == str(n)
            await ws.send_text("one too many")
            assert await ws.wait_closed() == CloseCode.POLICY_VIOLATION
    assert "message rate over MESSAGE_RATE=0.001/s (burst 3) (closed 1008)" in caplog.text


async def test_idle_timeout_closes_4408(caplog: pytest.LogCaptureFixture) -> None:
    """A socket with no inbound message for IDLE_TIMEOUT seconds is closed with 4408 (logged at INFO)."""
    with override_settings(TETHER={"IDLE_TIMEOUT": 0.2}):
        async with connect("/ws/echo/") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong!"
            assert await ws.wait_closed() == CloseCode.TIMEOUT
    [record] = [r for r in caplog.records if r.name == "tether.limits"]
    assert record.levelname == "INFO" and "idle for 0.2s (closed 4408)" in record.getMessage()


async def test_after_a_violation_the_handler_sees_disconnected_every_time() -> None:
    """The handler gets Disconnected(code) from receive() and send(), as if the client had left."""
    sent: list[dict[str, Any]] = []
    events = [{"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": b"12345"}]

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    socket = WebSocket({"type": "websocket", "path": "/x/", "headers": []}, receive, send)
    socket.max_message_size = 4
    await socket.accept()
    for _ in range(2):
        with pytest.raises(Disconnected) as info:
            await socket.receive()
        assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(Disconnected):
        await socket.send_text("late")
    assert sent[-1] == {"type": "websocket.close", "code": 1009, "reason": "message too big"}


async def test_handshake_timeout_gives_up_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """If the server never sends websocket.connect, the app returns after HANDSHAKE_TIMEOUT, sending nothing."""
    never = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/echo/", "headers": [], "query_string": b""}
    with override_settings(TETHER={"HANDSHAKE_TIMEOUT": 0.05}):
        await asyncio.wait_for(TetherASGIHandler()(scope, receive, send), 5)
    assert sent == []
    assert "no websocket.connect from the server within HANDSHAKE_TIMEOUT=0.05s" in caplog.text


# -- on a real server, whose own limit (uvicorn: 16 MiB) is larger ---------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve("uvicorn-sansio") as running:
        yield running


async def test_oversized_message_on_a_real_server_closes_1009_and_others_are_served(server: Server) -> None:
    """uvicorn would take 2 MiB; tether closes that client with 1009 and another client is still served."""
    async with (
        websockets.connect(f"{server.url}/ws/echo/", max_size=None) as big,
        websockets.connect(f"{server.url}/ws/echo/") as other,
    ):
        await big.send("x" * (2 * MIB))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(big.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
        await other.send("ping")
        assert await asyncio.wait_for(other.recv(), 10) == "pong!"
    assert "over MAX_MESSAGE_SIZE=1048576 (closed 1009)" in server.log
