"""tether.testing.connect: handshake outcomes, timeouts, raw events, exceptions."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tether import CloseCode
from tether.testing import Rejected, connect


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
