"""The hub in one process: membership, fan-out, hooks, backpressure, cleanup, broadcast from sync code."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction

from tests.test_backends import pg_migrated  # noqa: F401 (a fixture)
from tests.testapp.models import Message
from tether import (
    CloseCode,
    Disconnected,
    InvalidGroup,
    InvalidState,
    WebSocket,
    broadcast,
    broadcast_on_commit,
    broadcast_sync,
    user_group,
)
from tether import hub as hub_module
from tether import publish as publish_module
from tether.asgi import TetherASGIHandler
from tether.backends import memory
from tether.groups import validate_group
from tether.hub import Hub, get_hub, join_user_group, stop_hub
from tether.routing import SERVICES
from tether.testing import connect, get_application


@pytest.fixture(autouse=True)
async def fresh_hub() -> AsyncIterator[None]:
    yield
    await stop_hub()


def new_group() -> str:
    return f"g.{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis", "postgres"])
def any_backend(request: pytest.FixtureRequest, settings: Any) -> str:
    """Runs a hub test over each backend: the in-memory one, the real Redis and the real PostgreSQL."""
    if request.param == "redis":
        request.getfixturevalue("redis_server")
        settings.TETHER = {
            "BACKEND": "tether.backends.redis.RedisBackend",
            "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "tether-hub:"},
        }
    elif request.param == "postgres":
        request.getfixturevalue("postgres")
        request.getfixturevalue("pg_migrated")
        settings.TETHER = {"BACKEND": "tether.backends.postgres.PostgresBackend", "OPTIONS": {"database": "pg"}}
    return str(request.param)


async def settled(hub: Hub) -> None:
    """Wait for the hub's background (un)subscriptions to finish."""
    while hub._tasks:
        await asyncio.gather(*list(hub._tasks), return_exceptions=True)


class SlowClient:
    """An in-process client that stops reading: once stalled, the app's data sends block,
    as they do on a real server when the client's TCP window is full."""

    def __init__(self, path: str) -> None:
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reading = asyncio.Event()
        self.reading.set()
        self.blocked = asyncio.Event()  # a send is waiting on the stalled client
        scope = {
            "type": "websocket",
            "path": path,
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "subprotocols": [],
            "extensions": {"tether.testing": {"exceptions": []}},
        }
        self.task = asyncio.create_task(get_application()(scope, self.to_app.get, self._send))

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send" and not self.reading.is_set():
            self.blocked.set()
            await self.reading.wait()
        await self.from_app.put(message)

    async def start(self) -> dict[str, Any]:
        await self.to_app.put({"type": "websocket.connect"})
        assert (await self.next())["type"] == "websocket.accept"
        return await self.next()

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.from_app.get(), 3)

    async def texts(self) -> list[str]:
        """Everything sent so far that is queued on our side."""
        out = []
        while not self.from_app.empty():
            out.append(self.from_app.get_nowait()["text"])
        return out

    async def disconnect(self) -> None:
        await self.to_app.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 3)


# -- names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("x" * 201, "201 characters"),
        ("chat\nroom", "unprintable"),
        ("chat\x00", "unprintable"),
        (42, "a str, not int"),
    ],
)
def test_invalid_group_names_say_why(name: Any, why: str) -> None:
    """A bad group name raises InvalidGroup naming the problem."""
    with pytest.raises(InvalidGroup, match=why):
        validate_group(name)


def test_valid_group_names_pass() -> None:
    """Letters, digits and _ . : - up to 100 characters are accepted unchanged."""
    for name in ("chat.lobby", "user.42", "a:b-c_d", "x" * 100):
        assert validate_group(name) == name


class FakeUser:
    is_authenticated = True

    def __init__(self, pk: Any) -> None:
        self.pk = pk


def test_user_group_takes_a_user_or_a_pk() -> None:
    """user_group() is "user.<pk>" for a user object or a bare pk; anonymous users have none."""
    assert user_group(FakeUser(7)) == "user.7" == user_group(7)
    pk = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert user_group(pk) == f"user.{pk}"
    anonymous = FakeUser(None)
    anonymous.is_authenticated = False
    with pytest.raises(InvalidGroup, match="anonymous"):
        user_group(anonymous)
    with pytest.raises(InvalidGroup):
        user_group(None)


async def test_bad_message_type_raises_before_sending() -> None:
    """broadcast() refuses a message it can't encode, with TypeError naming the type."""
    with pytest.raises(TypeError, match="not set"):
        await broadcast(new_group(), {1, 2})
    with pytest.raises(InvalidGroup):
        await broadcast("bad\tgroup", "x")


# -- membership and fan-out ----------------------------------------------------


async def test_join_broadcast_leave(any_backend: str) -> None:
    """A joined socket gets the group's messages; after leave() it gets no more."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        assert await ws.receive_json() == {"joined": group}
        await broadcast(group, {"n": 1})
        assert await ws.receive_json() == {"n": 1}
        await ws.send_json({"leave": group})
        assert await ws.receive_json() == {"left": group}
        await broadcast(group, {"n": 2})
        await ws.send_json({"groups": True})
        assert await ws.receive_json() == {"groups": []}  # and no {"n": 2} before it


async def test_join_and_leave_are_idempotent(any_backend: str) -> None:
    """Joining twice delivers once; leaving a group never joined is a no-op."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        await ws.send_json({"join": group})
        assert await ws.receive_json() == {"joined": group}
        await ws.send_json({"leave": "never.joined"})
        assert await ws.receive_json() == {"left": "never.joined"}
        await broadcast(group, "once")
        await broadcast(group, "end")
        assert [await ws.receive_text(), await ws.receive_text()] == ["once", "end"]


async def test_frames_keep_their_kind(any_backend: str) -> None:
    """dict/list -> JSON text, str -> text, bytes -> binary."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        await broadcast(group, [1, "a"])
        await broadcast(group, "plain")
        await broadcast(group, b"\x00\xff")
        assert await ws.receive_text() == '[1,"a"]'
        assert await ws.receive_text() == "plain"
        assert await ws.receive_bytes() == b"\x00\xff"


async def test_fan_out_to_many_sockets_in_order() -> None:
    """200 sockets in one group each get 20 messages in publish order; the backend is subscribed once."""
    group = new_group()
    clients = []
    contexts = [connect(f"/ws/group/{group}/") for _ in range(200)]
    for context in contexts:
        ws = await context.__aenter__()
        await ws.receive_json()
        clients.append(ws)
    try:
        hub = await get_hub()
        assert len(hub.groups[group]) == 200
        assert len(memory._subscribers[group]) == 1
        for n in range(20):
            await broadcast(group, {"n": n})
        for ws in clients:
            assert [(await ws.receive_json())["n"] for _ in range(20)] == list(range(20))
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    await settled(hub)
    assert group not in hub.groups
    assert group not in memory._subscribers


async def test_message_is_encoded_once_for_all_members() -> None:
    """Every member is handed the very same encoded frame object."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as a, connect(f"/ws/group/{group}/") as b:
        await a.receive_json(), await b.receive_json()
        await broadcast(group, {"big": "x" * 1000})
        text_a, text_b = await a.receive_text(), await b.receive_text()
        assert text_a == text_b and text_a is text_b


async def test_socket_view_broadcast_reaches_other_members(any_backend: str) -> None:
    """SocketView.broadcast() from one connection reaches every member, the sender included."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as a, connect(f"/ws/group/{group}/") as b:
        await a.receive_json(), await b.receive_json()
        await a.send_json({"broadcast": {"from": "a"}})
        assert await b.receive_json() == {"from": "a"}
        assert await a.receive_json() == {"from": "a"}


# -- the per-connection hook ---------------------------------------------------


async def test_group_message_hook_transforms_and_drops_per_connection() -> None:
    """group_message() runs per connection: one socket drops a message another receives."""
    group = new_group()
    async with (
        connect(f"/ws/censored/{group}/") as plain,
        connect(f"/ws/censored/{group}/?clearance=yes") as cleared,
    ):
        await plain.receive_json(), await cleared.receive_json()
        await broadcast(group, "the secret")
        await broadcast(group, "public")
        await broadcast(group, b"raw")
        assert await cleared.receive_text() == "THE SECRET"
        assert await cleared.receive_text() == "PUBLIC"
        assert await plain.receive_text() == "PUBLIC"
        assert await plain.receive_bytes() == b"raw"
        assert await cleared.receive_bytes() == b"raw"


async def test_raising_hook_closes_only_that_socket(caplog: pytest.LogCaptureFixture) -> None:
    """A group_message() that raises closes its socket with 1011 and a logged traceback; others go on."""
    group = new_group()
    async with (
        connect(f"/ws/broken-hook/{group}/", raise_app_exceptions=False) as broken,
        connect(f"/ws/group/{group}/") as fine,
    ):
        await broken.receive_json(), await fine.receive_json()
        await broadcast(group, "hi")
        assert await broken.wait_closed() == CloseCode.INTERNAL_ERROR
        assert await fine.receive_text() == "hi"
    assert "hook failed" in caplog.text


# -- cleanup -------------------------------------------------------------------


async def test_membership_dropped_on_disconnect() -> None:
    """When the client disconnects, the socket leaves its groups and the last one out unsubscribes."""
    group, other = new_group(), new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        await ws.send_json({"join": other})
        await ws.receive_json()
        hub = await get_hub()
        assert set(hub.groups) >= {group, other}
    await settled(hub)
    assert group not in hub.groups and other not in hub.groups
    assert group not in hub._subscribed and group not in memory._subscribers


async def test_membership_dropped_on_crash() -> None:
    """A handler that raises (1011) leaves no membership behind."""
    group = new_group()
    async with connect(f"/ws/group/{group}/", raise_app_exceptions=False) as ws:
        await ws.receive_json()
        hub = await get_hub()
        member = next(iter(hub.groups[group]))
        await ws.send_json({"crash": True})
        assert await ws.wait_closed() == CloseCode.INTERNAL_ERROR
    await settled(hub)
    assert group not in hub.groups
    assert member.task.done()


async def test_join_on_closed_socket_raises() -> None:
    """join() after the socket closed is a bug and says so."""
    events = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    socket = WebSocket({"type": "websocket", "path": "/x/"}, receive, send, services=SERVICES)
    await socket.accept()
    await socket.close()
    with pytest.raises(InvalidState, match="closed socket"):
        await socket.join(new_group())


@pytest.mark.parametrize("ended_by", ["tether", "client"])
async def test_join_after_tether_or_the_client_ended_the_socket_raises_disconnected(ended_by: str) -> None:
    """A join that runs after tether closed the socket (terminate(), close_all() at shutdown, an overflow)
    or the client left, e.g. started between the handler's receive() and that close, ends the handler
    with Disconnected like its next receive or send would: no handler code for it (tests/test_fuzz.py)."""
    events: list[dict[str, Any]] = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1001}]

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    socket = WebSocket({"type": "websocket", "path": "/x/"}, receive, send, services=SERVICES)
    await socket.accept()
    if ended_by == "tether":
        await socket.terminate(CloseCode.TRY_AGAIN_LATER, "busy")
    else:
        with pytest.raises(Disconnected):
            await socket.receive()
    with pytest.raises(Disconnected) as info:
        await socket.join(new_group())
    assert info.value.code == (CloseCode.TRY_AGAIN_LATER if ended_by == "tether" else 1001)


async def test_join_before_accept_delivers_after_accept() -> None:
    """Messages for a socket that joined before accept() (as join_user_group may) wait for the handshake."""
    sent: list[dict[str, Any]] = []
    three_sent = asyncio.Event()
    events = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            three_sent.set()

    socket = WebSocket({"type": "websocket", "path": "/x/"}, receive, send, services=SERVICES)
    group = new_group()
    assert await join_user_group(socket, FakeUser(None)) is False  # anonymous: no-op
    assert await join_user_group(socket, FakeUser(5)) is True
    await socket.join(group)
    assert socket.groups == {group, "user.5"}
    await broadcast(group, "early")
    await broadcast("user.5", "for you")
    assert sent == []
    await socket.accept()
    await asyncio.wait_for(three_sent.wait(), 3)
    assert [m.get("text") for m in sent] == [None, "early", "for you"]
    (await get_hub()).discard(socket)
    assert socket.groups == frozenset()


# -- backpressure --------------------------------------------------------------


async def test_slow_client_is_closed_1013_without_blocking_others(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With OVERFLOW="close", a client that stops reading is closed with 1013 and logged,
    while the publisher and a fast member go on unhindered."""
    settings.TETHER = {"QUEUE_SIZE": 5}
    group = new_group()
    slow = SlowClient(f"/ws/group/{group}/")
    await slow.start()
    async with connect(f"/ws/group/{group}/") as fast:
        await fast.receive_json()
        slow.reading.clear()
        await broadcast(group, "m1")
        await slow.blocked.wait()  # m1 is in flight, stuck
        for n in range(2, 9):
            await broadcast(group, f"m{n}")  # m2..m6 fill the queue, m7 overflows
        close = await slow.next()
        assert close == {"type": "websocket.close", "code": CloseCode.TRY_AGAIN_LATER, "reason": close["reason"]}
        assert [await fast.receive_text() for _ in range(8)] == [f"m{n}" for n in range(1, 9)]
        hub = await get_hub()
        assert hub.dropped_messages == 6  # m2..m6 queued, m7 refused
        assert "Closing websocket" in caplog.text and "1013" in caplog.text
    await slow.disconnect()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("drop_oldest", ["m1", "m8", "m9", "m10"]), ("drop_newest", ["m1", "m2", "m3", "m4"])],
)
async def test_drop_policies_keep_the_socket_open(settings: Any, policy: str, expected: list[str]) -> None:
    """drop_oldest keeps the newest messages, drop_newest the oldest; both count what they drop."""
    settings.TETHER = {"QUEUE_SIZE": 3, "OVERFLOW": policy}
    group = new_group()
    slow = SlowClient(f"/ws/group/{group}/")
    await slow.start()
    slow.reading.clear()
    await broadcast(group, "m1")
    await slow.blocked.wait()
    for n in range(2, 11):
        await broadcast(group, f"m{n}")
    hub = await get_hub()
    assert hub.dropped_messages == 6
    slow.reading.set()
    received = [(await slow.next())["text"] for _ in range(4)]
    assert received == expected
    await slow.disconnect()


async def test_burst_larger_than_the_queue_does_not_drop_fast_clients(settings: Any) -> None:
    """A publisher looping with no other await sends 5x QUEUE_SIZE messages; a reading client gets them all."""
    settings.TETHER = {"QUEUE_SIZE": 10}
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        for n in range(50):
            await broadcast(group, str(n))
        assert [await ws.receive_text() for _ in range(50)] == [str(n) for n in range(50)]
        assert (await get_hub()).dropped_messages == 0


def test_unknown_overflow_policy_is_refused(settings: Any) -> None:
    """A typo in OVERFLOW fails loudly, listing the choices."""
    settings.TETHER = {"OVERFLOW": "drop"}
    with pytest.raises(ValueError, match="close, drop_oldest, drop_newest"):
        Hub(asyncio.new_event_loop())


# -- from sync code -------------------------------------------------------------


async def test_broadcast_sync_from_a_worker_thread() -> None:
    """broadcast_sync() in a thread (a sync view under ASGI, a Celery-like worker) reaches the sockets, in order."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()

        def work() -> None:
            for n in range(5):
                broadcast_sync(group, {"n": n})

        await sync_to_async(work)()
        await asyncio.to_thread(work)
        assert [(await ws.receive_json())["n"] for _ in range(10)] == [*range(5), *range(5)]


async def test_broadcast_sync_inside_the_event_loop_thread_raises_at_once() -> None:
    """broadcast_sync() on the loop's own thread would block that loop: it raises at once, like Django's
    SynchronousOnlyOperation, and the socket still gets what is broadcast properly afterwards."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        with pytest.raises(SynchronousOnlyOperation, match="await broadcast"):
            broadcast_sync(group, "from the loop thread")
        await broadcast(group, "sentinel")
        assert await ws.receive_text() == "sentinel"  # the refused message never went out


def test_broadcast_sync_with_no_loop_anywhere() -> None:
    """A management command or script with no event loop can broadcast (nothing joined: no error)."""
    assert threading.current_thread() is threading.main_thread()
    broadcast_sync(new_group(), {"ok": True})
    assert publish_module._publisher is not None and publish_module._publisher.thread.is_alive()


@pytest.mark.django_db(transaction=True)
async def test_broadcast_on_commit_sends_only_when_committed() -> None:
    """broadcast_on_commit() sends after COMMIT, and never after a rollback."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()

        def rolled_back() -> None:
            with pytest.raises(RuntimeError), transaction.atomic():
                Message.objects.create(room="r", text="lost")
                broadcast_on_commit(group, "rolled back")
                raise RuntimeError

        def committed() -> None:
            with transaction.atomic():
                Message.objects.create(room="r", text="kept")
                broadcast_on_commit(group, "committed")

        await sync_to_async(rolled_back)()
        await sync_to_async(committed)()
        assert await ws.receive_text() == "committed"


# -- lifespan -------------------------------------------------------------------


async def test_lifespan_starts_and_stops_the_hub() -> None:
    """Lifespan startup starts the hub; shutdown stops it after closing sockets."""
    app = TetherASGIHandler()
    events = asyncio.Queue[dict[str, Any]]()
    answers: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message["type"])

    await events.put({"type": "lifespan.startup"})
    await events.put({"type": "lifespan.shutdown"})
    started: list[Hub] = []
    original = app.startup

    async def startup() -> None:
        await original()
        started.append(hub_module._hub)  # type: ignore[arg-type]

    app.startup = startup  # type: ignore[method-assign]
    await app.lifespan(events.get, send)
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert started[0] is not None and started[0].stopped
    assert hub_module._hub is None


async def test_leave_with_a_bad_name_raises() -> None:
    """leave() validates the name like join(): the handler's InvalidGroup surfaces (and closes 1011)."""
    group = new_group()
    async with connect(f"/ws/group/{group}/") as ws:
        await ws.receive_json()
        await ws.send_json({"leave": "bad\nname"})
        with pytest.raises(InvalidGroup, match="unprintable"):
            await ws.receive_json()
