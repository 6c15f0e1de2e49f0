"""Fuzz: random ASGI event sequences against a SocketView never crash the app, leak a task or stop service."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.asgi import TetherASGIHandler
from tether.exceptions import InvalidState
from tether.testing import connect

MIB = 1024 * 1024
HUGE_TEXT = "x" * (MIB + 1)
HUGE_BYTES = b"\x00" * (MIB + 1)


def _text(text: str | None) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": text}


def _bytes(data: bytes | None) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": data}


EVENTS = st.one_of(
    st.text(max_size=40).map(_text),
    st.binary(max_size=40).map(_bytes),
    st.sampled_from(['{"a": 1}', "[1, 2]", "null", '{"a":', "[1,", "{'single': 1}", '"\\ud800"', "NaN"]).map(_text),
    st.sampled_from(["", "\udc80", "\ud800x", "é" * 10]).map(_text),  # empty, lone surrogates (invalid UTF-8)
    st.sampled_from([b"", b"\xff\xfe", b"\xc3"]).map(_bytes),  # empty, invalid UTF-8 bytes
    st.just(_text(HUGE_TEXT)),
    st.just(_bytes(HUGE_BYTES)),
    st.just({"type": "websocket.receive"}),  # neither text nor bytes
    st.just({"type": "websocket.receive", "text": None, "bytes": None}),
    st.sampled_from([{"type": "websocket.disconnect", "code": 1000}, {"type": "websocket.disconnect"}]),
    st.just({"type": "websocket.disconnect", "code": 1001, "reason": "tab closed"}),
    st.just({"type": "websocket.connect"}),  # a server repeating itself
    st.just({"type": "websocket.bogus"}),
)


class _Server:
    """Plays the server: hands the app the events, then disconnect forever; sends fail once the client is gone."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.sent: list[dict[str, Any]] = []
        self.gone = False

    async def receive(self) -> dict[str, Any]:
        event = self.events.pop(0) if self.events else {"type": "websocket.disconnect", "code": 1006}
        if event["type"] == "websocket.disconnect":
            self.gone = True
        return event

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise OSError("client disconnected")
        if message["type"] in ("websocket.close", "websocket.http.response.body"):
            self.gone = True
        self.sent.append(message)


async def _scenario(events: list[dict[str, Any]]) -> None:
    app = TetherASGIHandler()
    server = _Server(list(events))
    errors: list[BaseException] = []
    scope = {
        "type": "websocket",
        "path": "/ws/echo-view/",
        "headers": [(b"host", b"testserver")],
        "query_string": b"",
        "extensions": {"tether.testing": {"exceptions": errors}},
    }
    await asyncio.wait_for(app(scope, server.receive, server.send), 10)  # anything raised fails the test

    assert asyncio.all_tasks() == {asyncio.current_task()}, "the app left a task running"
    assert app.websocket.sockets == set(), "the app kept a closed socket registered"
    kinds = [m["type"] for m in server.sent]
    assert kinds.count("websocket.accept") <= 1 and kinds.count("websocket.close") <= 1
    if "websocket.accept" in kinds and "websocket.close" not in kinds:
        assert server.gone, "the app returned leaving an accepted socket open"
    assert all(isinstance(exc, InvalidState) for exc in errors), errors  # only a misbehaving server gets 1011

    async with connect("/ws/echo-view/", application=app) as ws:  # the app still serves a fresh client
        await ws.send_json({"still": "here"})
        assert await ws.receive_json() == {"still": "here"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connect_first=st.booleans(), events=st.lists(EVENTS, max_size=12))
def test_random_event_sequences_never_break_the_app(connect_first: bool, events: list[dict[str, Any]]) -> None:
    """Text, bytes, invalid UTF-8, huge, empty, malformed JSON and disconnects in any order are all survived."""
    asyncio.run(_scenario([{"type": "websocket.connect"}, *events] if connect_first else events))
