"""Fuzz: random ASGI event sequences against a SocketView never crash the app, leak a task or stop service."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import require_service
from tests.testapp import core_sockets
from tether.asgi import TetherASGIHandler
from tether.exceptions import InvalidState
from tether.hub import current_hub, get_hub, stop_hub
from tether.publish import broadcast
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


# -- the connection and the hub together: a program of client, handler, hub and tether actions --------

GROUPS = ("a", "b", "c")
SOCKETS = 3
COMMANDS = st.one_of(
    st.sampled_from(GROUPS).map(lambda g: f"join {g}"),
    st.sampled_from(GROUPS).map(lambda g: f"leave {g}"),
    st.lists(st.sampled_from(GROUPS), min_size=2, max_size=3).map(lambda gs: "both " + " ".join(gs)),
    st.sampled_from(["echo x", "close", "nonsense"]),
)
STEPS = st.one_of(
    st.tuples(st.just("send"), st.integers(0, SOCKETS - 1), COMMANDS),
    st.tuples(st.just("bytes"), st.integers(0, SOCKETS - 1)),  # a binary frame: the handler's receive_text raises
    st.tuples(st.just("disconnect"), st.integers(0, SOCKETS - 1)),
    st.tuples(st.just("stall"), st.integers(0, SOCKETS - 1)),
    st.tuples(st.just("unstall"), st.integers(0, SOCKETS - 1)),
    st.tuples(st.just("terminate"), st.integers(0, SOCKETS - 1), st.sampled_from([1013, 1008, 4401])),
    st.tuples(st.just("broadcast"), st.sampled_from(GROUPS)),
    st.tuples(st.just("run"), st.integers(1, 20)),  # let the loop run that many steps
    st.just(("close_all",)),
)


class _StrictPeer:
    """One client as a strict server sees it: any message after the app's close raises RuntimeError
    (as uvicorn does) and is recorded; after the client left, sends raise OSError; ``stalled`` data
    sends block, as a client that stops reading."""

    def __init__(self, app: TetherASGIHandler, n: int) -> None:
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.after_close: list[dict[str, Any]] = []
        self.closed = False
        self.gone = False
        self.reading = asyncio.Event()
        self.reading.set()
        self.errors: list[BaseException] = []
        self.arrived = asyncio.Condition()
        scope = {
            "type": "websocket",
            "path": f"/core/fuzz/{n}/",
            "headers": [(b"host", b"testserver")],
            "query_string": b"",
            "extensions": {"tether.testing": {"exceptions": self.errors}},
        }
        self.task = asyncio.create_task(app(scope, self.to_app.get, self.send))

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            self.after_close.append(message)
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r}, after sending 'websocket.close'")
        if self.gone:
            raise OSError("client disconnected")
        if message["type"] == "websocket.send":
            await self.reading.wait()
        async with self.arrived:
            self.sent.append(message)
            self.arrived.notify_all()
        if message["type"] == "websocket.close":
            self.closed = True  # from here on, as uvicorn does, whatever else the app sends is an error
            for _ in range(3):
                await asyncio.sleep(0)  # the close frame's write takes a moment: other tasks run meanwhile

    async def wait_for_text(self, text: str) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: any(m.get("text") == text for m in self.sent)), 10)

    def leave(self) -> None:
        if not self.gone:
            self.gone = True
            self.to_app.put_nowait({"type": "websocket.disconnect", "code": 1001})


async def _program(steps: list[tuple[Any, ...]], tag: str) -> None:
    core_sockets.ENDINGS.clear()
    app = TetherASGIHandler()
    peers = [_StrictPeer(app, n) for n in range(SOCKETS)]
    for peer in peers:
        peer.to_app.put_nowait({"type": "websocket.connect"})
    background: list[asyncio.Future[None]] = []  # tether's own closes, started mid-program
    for step in steps:
        kind = step[0]
        if kind == "send" or kind == "bytes":
            peer = peers[step[1]]
            if not peer.gone:
                frame = (
                    {"text": step[2].replace(" a", f" {tag}a").replace(" b", f" {tag}b").replace(" c", f" {tag}c")}
                    if kind == "send"
                    else {"bytes": b"\x00"}
                )
                peer.to_app.put_nowait({"type": "websocket.receive", **frame})
        elif kind == "disconnect":
            peers[step[1]].leave()
        elif kind == "stall":
            peers[step[1]].reading.clear()
        elif kind == "unstall":
            peers[step[1]].reading.set()
        elif kind == "terminate":
            for socket in list(app.websocket.sockets):
                if socket.path == f"/core/fuzz/{step[1]}/":
                    background.append(asyncio.ensure_future(socket.terminate(step[2], "fuzz")))
        elif kind == "broadcast":
            await broadcast(tag + step[1], "news")
        elif kind == "close_all":
            background.append(asyncio.ensure_future(app.websocket.close_all()))
        for _ in range(step[1] if kind == "run" else 1):
            await asyncio.sleep(0)
    for peer in peers:
        peer.reading.set()
        peer.leave()
    await asyncio.wait_for(asyncio.gather(*(peer.task for peer in peers), *background), 10)  # nothing escapes

    for peer in peers:
        assert peer.after_close == [], "an ASGI message after websocket.close"
        assert peer.errors == [], peer.errors
        kinds = [m["type"] for m in peer.sent]
        assert kinds.count("websocket.close") <= 1 and kinds.count("websocket.accept") <= 1
    endings = core_sockets.ENDINGS
    assert len(endings) == SOCKETS and all(e in ("closed", "invalid") or isinstance(e, int) for e in endings), endings
    assert app.websocket.sockets == set()
    hub = current_hub()
    if hub is not None:
        while hub._tasks:
            await asyncio.gather(*list(hub._tasks), return_exceptions=True)
        assert hub.members == {} and hub.groups == {} and hub._fanout == {}, "membership left behind"
        assert hub._locks == {}, "a group lock left behind"
    # still serving: a fresh socket joins and gets a broadcast
    fresh = _StrictPeer(app, 9)
    fresh.to_app.put_nowait({"type": "websocket.connect"})
    fresh.to_app.put_nowait({"type": "websocket.receive", "text": f"join {tag}a"})
    fresh.to_app.put_nowait({"type": "websocket.receive", "text": "echo joined"})
    await fresh.wait_for_text("joined")
    await (await get_hub()).publish(tag + "a", "after")
    await fresh.wait_for_text("after")
    fresh.leave()
    await asyncio.wait_for(fresh.task, 10)
    await stop_hub()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == [], f"tasks left running: {leftover}"


FUZZ_BACKENDS = {
    "memory": ({"BACKEND": "tether.backends.memory.MemoryBackend"}, None, 300),
    "redis": (
        {
            "BACKEND": "tether.backends.redis.RedisBackend",
            "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-fuzz:"},
        },
        ("Redis", 6379),
        60,
    ),
    "postgres": (
        {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}},
        ("PostgreSQL", 5432),
        60,
    ),
}


@pytest.mark.parametrize("backend", list(FUZZ_BACKENDS))
def test_random_programs_leave_nothing_behind(backend: str) -> None:
    """Client frames and disconnects, handler joins/leaves (two at once), closes by the handler and by
    tether (overflow, terminate, shutdown) and broadcasts, in any order, on every backend: nothing
    escapes the app, no ASGI message follows a close, every handler ends with Disconnected (or its
    own close), and no membership, lock or task is left behind."""
    options, service, examples = FUZZ_BACKENDS[backend]
    if service is not None:
        require_service(service[0], "127.0.0.1", service[1])
    tag = f"f{uuid.uuid4().hex[:8]}."

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps=st.lists(STEPS, max_size=30))
    # Joins started between the handler's receive and tether's close (close_all) raised InvalidState:
    @example(steps=[("send", 2, "both a a"), ("send", 2, "both a a"), ("close_all",)])
    @example(steps=[("run", 1), ("send", 2, "both a a"), ("send", 2, "both a a"), ("close_all",)])
    def run(steps: list[tuple[Any, ...]]) -> None:
        with override_settings(ROOT_URLCONF="tests.urls_core", TETHER={**options, "QUEUE_SIZE": 2}):
            asyncio.run(_program(steps, tag))

    run()
