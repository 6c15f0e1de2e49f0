"""What docs/migrating-from-channels.md promises about code moved over from Channels."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from django.test import override_settings

from tether import CloseCode, SocketView, broadcast
from tether.testing import Rejected, connect
from tether.urls import websocket


class LeftoverSyncHook(SocketView):
    def connect(self) -> None:  # type: ignore[override]  # the tutorial's sync consumer, moved as is
        pass


urlpatterns = [websocket("sync/", LeftoverSyncHook.as_handler())]


def channels_type() -> str:
    return f"chat.message_{uuid.uuid4().hex[:8]}"  # a fresh dotted type: each is warned about once


async def test_a_leftover_channels_type_is_sent_as_data_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    """{"type": "chat.message"} reaches the socket unchanged; tether.hub warns once for that type, not again."""
    kind = channels_type()
    async with connect("/ws/group/room/") as ws:
        await ws.receive_json()
        with caplog.at_level(logging.WARNING, logger="tether.hub"):
            await broadcast("room", {"type": kind, "message": "one"})
            await broadcast("room", {"type": kind, "message": "two"})
        assert await ws.receive_json() == {"type": kind, "message": "one"}
        assert await ws.receive_json() == {"type": kind, "message": "two"}
    warnings = [r.getMessage() for r in caplog.records if kind in r.getMessage()]
    assert len(warnings) == 1
    assert f"no {kind.replace('.', '_')}() method is called" in warnings[0]


async def test_a_type_of_ones_own_protocol_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """An undotted "type" (the chat example's "announcement") is a client protocol, not Channels: no warning."""
    kind = channels_type()
    async with connect("/ws/group/room/") as ws:
        await ws.receive_json()
        with caplog.at_level(logging.WARNING, logger="tether.hub"):
            await broadcast("room", {"type": "announcement", "text": "hi"})
            await broadcast("room", {"type": kind})  # the sentinel: this one is warned about
        assert (await ws.receive_json())["type"] == "announcement"
        assert (await ws.receive_json())["type"] == kind
    warned = [r.getMessage() for r in caplog.records if r.name == "tether.hub"]
    assert len(warned) == 1 and kind in warned[0]


async def test_a_sync_hook_left_over_closes_1011_naming_the_await() -> None:
    """A plain `def connect` (the sync WebsocketConsumer's) fails the handshake with 1011 and the guide's error."""
    with override_settings(ROOT_URLCONF=__name__):
        with pytest.raises(Rejected) as refused:
            async with connect("/sync/", raise_app_exceptions=False):
                pass
        assert refused.value.code == CloseCode.INTERNAL_ERROR
        with pytest.raises(TypeError, match="object NoneType can't be used in 'await' expression"):
            async with connect("/sync/"):
                pass


@pytest.mark.parametrize("room", ["hello world", "café", "x" * 195])
async def test_group_names_take_what_a_url_segment_carries(room: str) -> None:
    """A room of any printable text up to 200 characters in the group name works end to end."""
    group: Any = f"chat.{room}"
    async with connect(f"/ws/group/{group}/") as one, connect(f"/ws/group/{group}/") as two:
        assert await one.receive_json() == {"joined": group}
        await two.receive_json()
        await one.send_json({"broadcast": {"text": room}})
        assert await one.receive_json() == {"text": room}
        assert await two.receive_json() == {"text": room}
