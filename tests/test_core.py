"""The core's races and edge cases (issue 10): each test reproduces one failure of the earlier core.

Closes tether starts reach the handler as ``Disconnected``; the hub's writer never sends after a
close; ``accept()`` never reopens a closed socket; ``join()`` returns only once delivery is in
place; every primary key has a user group; every socket whose session carries a user is in that
group; routes resolve among websocket patterns only; every socket has its own kwargs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings

from tests.testapp import core_sockets
from tether import CloseCode, ConnectionState, Disconnected, WebSocket, broadcast, user_group
from tether.backends.memory import MemoryBackend
from tether.groups import validate_group
from tether.hub import Hub, get_hub, stop_hub
from tether.routing import SERVICES
from tether.testing import connect, get_application, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def core_urls() -> AsyncIterator[None]:
    core_sockets.OUTCOMES.clear()
    core_sockets.SEEN_KWARGS.clear()
    core_sockets.LATE_USERS.clear()
    with override_settings(
        ROOT_URLCONF="tests.urls_core", PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]
    ):
        yield
    await stop_hub()


def new_group() -> str:
    return f"core.{uuid.uuid4().hex[:12]}"


class RawClient:
    """A client speaking raw ASGI to the application, strict as uvicorn is: any message after
    ``websocket.close`` raises RuntimeError. ``stall()`` makes data sends block, as a client that
    stops reading does once its TCP window is full."""

    def __init__(self, path: str) -> None:
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.arrived = asyncio.Condition()
        self.reading = asyncio.Event()
        self.reading.set()
        self.closed = False
        self.after_close: list[dict[str, Any]] = []
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
        if self.closed:
            self.after_close.append(message)
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r}, after sending 'websocket.close'")
        if message["type"] == "websocket.send":
            await self.reading.wait()
        if message["type"] == "websocket.close":
            self.closed = True
        async with self.arrived:
            self.sent.append(message)
            self.arrived.notify_all()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` messages the application sent."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.sent) >= count), 5)
        return self.sent[:count]

    async def open(self) -> None:
        await self.to_app.put({"type": "websocket.connect"})
        accept, joined = await self.wait_for(2)
        assert accept["type"] == "websocket.accept" and joined["text"] == "joined"

    def stall(self) -> None:
        self.reading.clear()

    async def finish(self) -> None:
        await self.to_app.put({"type": "websocket.disconnect", "code": CloseCode.NORMAL_CLOSURE})
        await asyncio.wait_for(self.task, 5)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- 1. closes tether starts reach the handler as Disconnected ------------------------------


async def test_shutdown_close_reaches_the_handler_as_disconnected_1001(caplog: pytest.LogCaptureFixture) -> None:
    """A handler blocked in receive() when the server shuts down gets Disconnected(1001), and so
    does its next send; nothing is logged as an error."""
    client = RawClient(f"/core/probe/{new_group()}/")
    await client.open()
    await get_application().websocket.close_all()
    await asyncio.wait_for(client.task, 5)
    assert client.sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "server shutting down"}
    assert core_sockets.OUTCOMES == [("receive", "Disconnected", 1001), ("send", "Disconnected", 1001)]
    assert errors(caplog) == []


async def test_overflow_close_reaches_the_handler_as_disconnected_1013(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops reading overflows its queue: its handler gets Disconnected(1013) (not
    InvalidState logged as a crash), and the hub keeps nothing of it."""
    settings.TETHER = {"QUEUE_SIZE": 2, "OVERFLOW": "close"}
    group = new_group()
    client = RawClient(f"/core/probe/{group}/")
    await client.open()
    client.stall()
    for n in range(5):  # m0 blocks in the writer's send, m1 and m2 fill the queue, m3 overflows
        await broadcast(group, f"m{n}")
    client.reading.set()  # let the close frame (and the blocked send) through
    await asyncio.wait_for(client.task, 5)
    assert core_sockets.OUTCOMES == [("receive", "Disconnected", 1013), ("send", "Disconnected", 1013)]
    assert [m["type"] for m in client.sent].count("websocket.close") == 1
    assert client.after_close == []
    hub = await get_hub()
    assert hub.stats()["members"] == 0 and hub.groups == {}
    assert errors(caplog) == []


# -- 2. the writer never sends after the handler's close ---------------------------------------


async def test_writer_does_not_send_after_a_close_made_during_the_group_message_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hook is awaiting when the view closes the socket: the transformed message is dropped,
    no ASGI message follows the close (uvicorn would raise) and nothing is logged as an error."""
    core_sockets.HOOK.update({step: asyncio.Event() for step in ("entered", "release", "returned", "cleaned")})
    group = new_group()
    client = RawClient(f"/core/hooked/{group}/")
    await client.open()
    await broadcast(group, "held")
    await asyncio.wait_for(core_sockets.HOOK["entered"].wait(), 5)
    await client.to_app.put({"type": "websocket.receive", "text": "close"})
    await client.wait_for(3)  # the view's close
    assert client.sent[2]["type"] == "websocket.close"
    core_sockets.HOOK["release"].set()
    await asyncio.wait_for(core_sockets.HOOK["returned"].wait(), 5)
    core_sockets.HOOK["cleaned"].set()
    await client.finish()
    assert client.after_close == []
    assert [m for m in client.sent if m.get("text") == "held"] == []
    assert errors(caplog) == []


# -- 3. accept() never reopens a closed socket ---------------------------------------------------


async def test_accept_finishing_after_a_concurrent_close_leaves_the_socket_closed() -> None:
    """The accept is on its way when another task closes the socket: it stays closed."""
    accept_sent = asyncio.Event()
    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            accept_sent.set()
            await release.wait()

    socket = WebSocket({"type": "websocket", "path": "/x/", "headers": []}, receive, send, services=SERVICES)
    accepting = asyncio.create_task(socket.accept())
    await accept_sent.wait()
    await socket.terminate(CloseCode.GOING_AWAY, "server shutting down")
    release.set()
    with pytest.raises(Disconnected) as raised:
        await accepting
    assert raised.value.code == CloseCode.GOING_AWAY
    assert socket.connection_state is ConnectionState.CLOSED
    with pytest.raises(Disconnected):
        await socket.send_text("nothing goes out")
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]


# -- 4. join() returns only once delivery is in place, for every caller ---------------------------


class GatedBackend(MemoryBackend):
    """A memory backend whose subscribe waits for the test, as a slow broker would."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def subscribe(self, group: str) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().subscribe(group)


def _served_socket(sent: list[dict[str, Any]]) -> WebSocket:
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return WebSocket({"type": "websocket", "path": "/x/", "headers": []}, receive, send, services=SERVICES)


async def test_the_second_of_two_concurrent_joins_waits_for_the_subscription() -> None:
    """A broadcast sent as soon as the second join() returns is delivered to both joiners."""
    backend = GatedBackend()
    hub = Hub(asyncio.get_running_loop(), backend)
    await hub.start()
    group = new_group()
    first_sent: list[dict[str, Any]] = []
    second_sent: list[dict[str, Any]] = []
    first, second = _served_socket(first_sent), _served_socket(second_sent)
    await first.accept()
    await second.accept()
    first_join = asyncio.create_task(hub.join(first, group))
    await backend.entered.wait()

    async def join_then_publish() -> None:
        await hub.join(second, group)
        await hub.publish(group, "right after join")

    publishing = asyncio.create_task(join_then_publish())
    for _ in range(50):  # let a premature return run its publish before the broker answers
        await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(first_join, publishing)
    await hub.publish(group, "sentinel")
    for _ in range(50):
        if len(second_sent) == 3:
            break
        await asyncio.sleep(0)
    texts = [m.get("text") for m in second_sent[1:]]
    assert texts == ["right after join", "sentinel"]
    assert [m.get("text") for m in first_sent[1:]] == ["right after join", "sentinel"]
    await hub.stop()


async def test_leaving_while_the_subscription_is_on_its_way_leaves_no_subscription_behind() -> None:
    """Found by the fuzz test: the last member leaves while the broker answers the join. The
    hub ends unsubscribed (the backend is not left listening to a group nobody is in)."""
    backend = GatedBackend()
    hub = Hub(asyncio.get_running_loop(), backend)
    await hub.start()
    group = new_group()
    socket = _served_socket([])
    await socket.accept()
    joining = asyncio.create_task(hub.join(socket, group))
    await backend.entered.wait()
    await hub.leave(socket, group)
    backend.gate.set()
    await joining
    while hub._tasks:
        await asyncio.gather(*list(hub._tasks))
    assert backend._groups == set() and hub._subscribed == set() and hub._locks == {}
    await hub.stop()


# -- 5. every primary key has a valid, distinct user group ---------------------------------------


class _User:
    is_authenticated = True

    def __init__(self, pk: Any) -> None:
        self.pk = pk


@pytest.mark.parametrize("pk", ["ann+x", "ann@example.com", "x" * 300, "café", "a b", "user#1", 7])
def test_any_primary_key_maps_to_a_valid_user_group(pk: Any) -> None:
    name = user_group(_User(pk))
    assert validate_group(name) == name
    assert user_group(pk) == name


def test_user_groups_do_not_collide() -> None:
    pks = ["ann+x", "ann_x", "ann.x", "ann@example.com", "ann", "x" * 300, "x" * 299, "user#1", "1", 1]
    names = {user_group(pk) for pk in pks}
    assert len(names) == len(pks) - 1  # "1" and 1 are the same key, as Django's session stores it


# -- 6. every socket whose session carries a user is in that user's group ------------------------


async def test_a_function_handler_that_never_asks_for_its_user_gets_the_users_messages() -> None:
    ann = await User.objects.acreate_user("ann", password="secret")
    control = new_group()
    async with connect(f"/core/quiet/{control}/", user=ann) as ws:
        assert await ws.receive_text() == "joined"
        await broadcast(user_group(ann), "for ann")
        await broadcast(control, "sentinel")
        assert [await ws.receive_text(), await ws.receive_text()] == ["for ann", "sentinel"]


async def test_a_session_voided_by_a_password_change_gets_none_of_the_users_messages() -> None:
    """Resolved as Django's aget_user does: a session whose auth hash no longer matches is anonymous."""
    ann = await User.objects.acreate_user("ann", password="secret")
    cookie = await session_cookie(ann)
    ann.set_password("changed")
    await ann.asave()
    control = new_group()
    async with connect(f"/core/quiet/{control}/", headers={"cookie": cookie}) as ws:
        assert await ws.receive_text() == "joined"
        await broadcast(user_group(ann), "for ann")
        await broadcast(control, "sentinel")
        assert await ws.receive_text() == "sentinel"


# -- 7. auser() after the client left ------------------------------------------------------------


async def test_auser_first_called_after_the_client_left_returns_the_user(caplog: pytest.LogCaptureFixture) -> None:
    ann = await User.objects.acreate_user("ann", password="secret")
    async with connect("/core/late-user/", user=ann) as ws:
        assert await ws.receive_text() == "ready"
    assert [user.pk for user in core_sockets.LATE_USERS] == [ann.pk]
    assert errors(caplog) == []


# -- 9. an HTTP pattern at the same path does not hide a websocket route -------------------------


async def test_an_earlier_http_pattern_at_the_same_path_does_not_hide_the_websocket_route() -> None:
    async with connect("/core/shadow/") as ws:
        await ws.send_text("hi")
        assert await ws.receive_text() == "ws:hi"


# -- 10. each socket has its own kwargs ----------------------------------------------------------


async def test_kwargs_changed_by_one_handler_are_not_seen_by_the_next_connection() -> None:
    for _ in range(2):
        async with connect("/core/kwargs/lobby/") as ws:
            assert await ws.receive_json() == {"room": "lobby", "extra": "leaked"}
    assert core_sockets.SEEN_KWARGS == [{"room": "lobby"}, {"room": "lobby"}]
