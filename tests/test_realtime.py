"""The realtime protocol tether.v1 in-process: commands, replies, pushes, permissions, limits, bad input."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.template import engines
from django.test import override_settings

from tests.testapp import realtime_sockets
from tether import CloseCode, broadcast, broadcast_sync, user_group
from tether.hub import stop_hub
from tether.realtime import PROTOCOL, message_frame
from tether.testing import Rejected, WebSocketTestClient, connect

PATH = "/ws/realtime/"


@pytest.fixture(autouse=True)
async def fresh_hub() -> AsyncIterator[None]:
    yield
    await stop_hub()


def new_group(prefix: str = "public") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


class Client:
    """Numbers commands and sorts what arrives into replies (by id) and pushes."""

    def __init__(self, ws: WebSocketTestClient) -> None:
        self.ws = ws
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}

    async def send(self, kind: str, **fields: Any) -> int:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "type": kind, **fields})
        return self.next_id

    async def reply(self, ident: Any) -> dict[str, Any]:
        while ident not in self.replies:
            frame = await self.ws.receive_json()
            if "type" in frame:
                self.pushes.append(frame)
            else:
                self.replies[frame["id"]] = frame
        return self.replies.pop(ident)

    async def call(self, kind: str, **fields: Any) -> dict[str, Any]:
        return await self.reply(await self.send(kind, **fields))

    async def push(self) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        frame = await self.ws.receive_json()
        assert "type" in frame, frame
        return dict(frame)


async def open_client(**kwargs: Any) -> Any:
    return connect(PATH, subprotocols=[PROTOCOL], **kwargs)


async def test_the_subprotocol_is_required_and_selected() -> None:
    """A client that doesn't offer tether.v1 is refused with 1002 (HTTP 400); one that does gets it selected."""
    with pytest.raises(Rejected) as refused:
        async with connect(PATH):
            pass
    assert (refused.value.code, refused.value.status) == (CloseCode.PROTOCOL_ERROR, 400)
    async with connect(PATH, subprotocols=["other", PROTOCOL]) as ws:
        assert ws.subprotocol == PROTOCOL


async def test_three_groups_over_one_socket_beside_a_plain_socket() -> None:
    """Broadcasts to three subscribed groups arrive as message pushes; a plain member gets the plain frame."""
    groups = [new_group(), new_group("room"), new_group()]
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws, connect(f"/ws/group/{groups[1]}/") as plain:
        assert await plain.receive_json() == {"joined": groups[1]}
        client = Client(ws)
        for group in groups:
            assert await client.call("subscribe", group=group) == {
                "id": client.next_id,
                "result": {"group": group, "position": None, "recovered": False},
            }
        for n, group in enumerate(groups):
            await broadcast(group, {"n": n, "when": "now"})
        for n, group in enumerate(groups):
            assert await client.push() == {"type": "message", "group": group, "data": {"n": n, "when": "now"}}
        assert await plain.receive_json() == {"n": 1, "when": "now"}


async def test_text_and_bytes_broadcasts_become_strings() -> None:
    """A str broadcast arrives as a JSON string (even one that looks like JSON but isn't), bytes as base64."""
    group = new_group()
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        await broadcast(group, "hello")
        await broadcast(group, "{not json")
        await broadcast(group, b"\x00\xff")
        await broadcast(group, [1, "two"])
        assert [(await client.push())["data"] for _ in range(4)] == ["hello", "{not json", "AP8=", [1, "two"]]
    frame = message_frame("g", b"\x00\xff")
    assert frame == '{"type":"message","group":"g","data":"AP8=","encoding":"base64"}'


async def test_broadcast_sync_reaches_protocol_subscribers() -> None:
    """broadcast_sync from a thread (a sync view) reaches a protocol subscriber as a message push."""
    group = new_group()
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        await sync_to_async(broadcast_sync, thread_sensitive=False)(group, {"from": "sync"})
        assert await client.push() == {"type": "message", "group": group, "data": {"from": "sync"}}


async def test_permission_denied_by_default_and_by_the_hooks() -> None:
    """can_subscribe / can_publish saying no answer forbidden; the socket stays usable."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        reply = await client.call("subscribe", group="secret.x")
        assert reply["error"]["code"] == "forbidden"
        reply = await client.call("publish", group="room.x", data={"a": 1})
        assert reply["error"]["code"] == "forbidden"
        assert (await client.call("ping"))["result"] == "pong"
    async with connect("/ws/realtime/staff/", subprotocols=[PROTOCOL]) as ws:  # the base class: async hook, anon
        assert (await Client(ws).call("subscribe", group="public.x"))["error"]["code"] == "forbidden"


@pytest.mark.django_db(transaction=True)
async def test_own_user_group_and_async_hooks() -> None:
    """A user may subscribe to their own user group (messages to the user arrive) and not to another's."""
    staff = await get_user_model().objects.acreate(username=f"s{uuid.uuid4().hex[:6]}", is_staff=True)
    other = await get_user_model().objects.acreate(username=f"o{uuid.uuid4().hex[:6]}")
    async with connect(PATH, subprotocols=[PROTOCOL], user=other) as ws:
        client = Client(ws)
        assert "result" in await client.call("subscribe", group=user_group(other))
        assert (await client.call("subscribe", group=user_group(staff)))["error"]["code"] == "forbidden"
        await broadcast(user_group(other), {"notice": "export ready"})
        assert (await client.push())["data"] == {"notice": "export ready"}
    async with connect("/ws/realtime/staff/", subprotocols=[PROTOCOL], user=staff) as ws:
        assert "result" in await Client(ws).call("subscribe", group="anything.at.all")


async def test_publish_reaches_subscribers_and_plain_members() -> None:
    """A permitted publish is a broadcast: other protocol clients and plain sockets of the group get it."""
    group = new_group()
    async with (
        connect(PATH, subprotocols=[PROTOCOL]) as a,
        connect(PATH, subprotocols=[PROTOCOL]) as b,
        connect(f"/ws/group/{group}/") as plain,
    ):
        await plain.receive_json()
        ca, cb = Client(a), Client(b)
        await cb.call("subscribe", group=group)
        assert await ca.call("publish", group=group, data={"text": "hi"}) == {
            "id": ca.next_id,
            "result": {"group": group, "position": None},
        }
        assert await cb.push() == {"type": "message", "group": group, "data": {"text": "hi"}}
        assert await plain.receive_json() == {"text": "hi"}
        assert (await ca.call("publish", group=group, data=5))["error"]["code"] == "bad_request"


@pytest.mark.django_db(transaction=True)
async def test_prepare_publish_stamps_what_is_broadcast() -> None:
    """prepare_publish's return value is what subscribers get: stamped with the author the server
    knows (a client claiming another name is overruled), for anonymous and signed-in users alike."""
    group = new_group("public.stamped")
    user = await get_user_model().objects.acreate(username=f"a{uuid.uuid4().hex[:6]}")
    async with (
        connect(PATH, subprotocols=[PROTOCOL], user=user) as a,
        connect(PATH, subprotocols=[PROTOCOL]) as b,
    ):
        ca, cb = Client(a), Client(b)
        await cb.call("subscribe", group=group)
        reply = await ca.call("publish", group=group, data={"text": "hi", "user": "someone else"})
        assert reply["result"] == {"group": group, "position": None}
        assert await cb.push() == {
            "type": "message",
            "group": group,
            "data": {"text": "hi", "user": user.get_username(), "n": 1},
        }
        await cb.call("publish", group=group, data={"text": "anon"})
        assert (await cb.push())["data"] == {"text": "anon", "user": None, "n": 1}
        await ca.call("publish", group=group, data={"text": "again"})
        assert (await cb.push())["data"]["n"] == 2


async def test_prepare_publish_refuses_with_an_error_reply_and_broadcasts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ProtocolError from prepare_publish is the command's error reply, and nothing goes out (a
    sentinel published after it is the next push); another exception answers internal and is logged.
    The socket keeps working either way."""
    group = new_group("public.stamped")
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        reply = await client.call("publish", group=group, data={"text": ""})
        assert reply["error"] == {"code": "bad_request", "message": 'send {"text": "..."}'}
        with caplog.at_level(logging.ERROR, "tether.realtime"):
            crashed = await client.call("publish", group="public.crash", data={"text": "boom"})
        assert crashed["error"]["code"] == "internal"
        assert "prepare_publish crashed" in caplog.text
        await client.call("publish", group=group, data={"text": "sentinel"})
        assert (await client.push())["data"] == {"text": "sentinel", "user": None, "n": 1}
        assert client.pushes == []


@override_settings(TETHER={"GROUPS": {"public.stamped*": {"history": 5}}})
async def test_prepare_publish_result_is_what_history_keeps() -> None:
    """In a history group the stamped data is stored: the reply has its position, history returns it."""
    group = new_group("public.stamped")
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        first = (await client.call("subscribe", group=group))["result"]
        reply = (await client.call("publish", group=group, data={"text": "kept", "extra": "dropped"}))["result"]
        assert reply["position"] == {"offset": 1, "epoch": first["position"]["epoch"]}
        push = await client.push()
        assert (push["position"], push["data"]) == (reply["position"], {"text": "kept", "user": None, "n": 1})
        page = (await client.call("history", group=group))["result"]
        assert [m["data"] for m in page["messages"]] == [{"text": "kept", "user": None, "n": 1}]


async def test_the_101st_subscription_is_refused() -> None:
    """MAX_SUBSCRIPTIONS (default 100) per connection: the next one answers too_many_subscriptions."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        ids = [await client.send("subscribe", group=f"room.{n}") for n in range(101)]
        replies = [await client.reply(ident) for ident in ids]
        assert all("result" in r for r in replies[:100])
        assert replies[100]["error"]["code"] == "too_many_subscriptions"
        assert "result" in await client.call("subscribe", group="room.5")  # already subscribed: idempotent
        await client.call("unsubscribe", group="room.0")
        assert "result" in await client.call("subscribe", group="room.100")


async def test_unsubscribe_stops_delivery() -> None:
    """After unsubscribe's reply nothing of the group arrives: a sentinel in another group comes first."""
    group, sentinel = new_group(), new_group()
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        await client.call("subscribe", group=sentinel)
        assert (await client.call("unsubscribe", group=group))["result"] == {"group": group}
        assert (await client.call("unsubscribe", group=group))["result"] == {"group": group}  # idempotent
        await broadcast(group, {"gone": True})
        await broadcast(sentinel, {"sentinel": True})
        assert (await client.push())["group"] == sentinel


async def test_the_server_ends_a_subscription() -> None:
    """end_subscription() sends an unsubscribed push and stops delivery."""
    group, sentinel = new_group("room"), new_group()
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        await client.call("subscribe", group=group)
        await client.call("subscribe", group=sentinel)
        await client.call("publish", group="public.kick", data={"group": group})
        assert client.pushes == [{"type": "unsubscribed", "group": group, "reason": "kicked"}]
        client.pushes.clear()
        await broadcast(group, {"gone": True})
        await broadcast(sentinel, {"sentinel": True})
        assert (await client.push())["group"] == sentinel


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"type": "ping"}', "bad_request"),
        ('{"id": true, "type": "ping"}', "bad_request"),
        ('{"id": 1, "type": "fly"}', "unknown_command"),
        ('{"id": 1}', "unknown_command"),
        ('{"id": 1, "type": "subscribe"}', "bad_request"),
        ('{"id": 1, "type": "subscribe", "group": ""}', "invalid_group"),
        ('{"id": 1, "type": "subscribe", "group": "public.a", "since": 3}', "bad_request"),
        ('{"id": 1, "type": "publish", "group": "public.a"}', "bad_request"),
        ('{"id": 1, "type": "history", "group": "public.a"}', "not_subscribed"),
        ('{"id": 1, "type": "presence", "group": "public.a"}', "not_subscribed"),
    ],
)
async def test_bad_commands_get_an_error_reply(frame: str, code: str) -> None:
    """Each malformed or unknown command is answered with its error code; the socket keeps working."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        await ws.send_text(frame)
        reply = await ws.receive_json()
        assert reply["error"]["code"] == code, reply
        assert isinstance(reply["error"]["message"], str)
        await ws.send_bytes(b"\x00")
        assert (await ws.receive_json())["error"]["code"] == "bad_request"
        assert (await Client(ws).call("ping"))["result"] == "pong"


async def test_a_raising_hook_answers_internal_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A permission hook that raises: the command gets internal, the traceback is logged, the socket lives."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        with caplog.at_level(logging.ERROR, "tether.realtime"):
            assert (await client.call("subscribe", group="crash.x"))["error"]["code"] == "internal"
        assert "can_subscribe crashed" in caplog.text
        assert (await client.call("ping"))["result"] == "pong"


@override_settings(TETHER={"COMMAND_RATE": 1, "COMMAND_BURST": 3})
async def test_command_rate() -> None:
    """Past COMMAND_BURST at once, commands answer rate_limited; pings are never limited."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        ids = [await client.send("unsubscribe", group="public.a") for _ in range(5)]
        codes = [(await client.reply(i)).get("error", {}).get("code") for i in ids]
        assert codes == [None, None, None, "rate_limited", "rate_limited"]
        assert (await client.call("ping"))["result"] == "pong"


@override_settings(TETHER={"MAX_COMMAND_SIZE": 200})
async def test_command_size() -> None:
    """A command over MAX_COMMAND_SIZE bytes answers too_large, counted in UTF-8."""
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        assert (await client.call("publish", group="public.a", data="é" * 100))["error"]["code"] == "too_large"
        assert "result" in await client.call("publish", group="public.a", data="e" * 100)


async def test_commands_run_in_order_and_ping_does_not_wait() -> None:
    """Commands are answered in order; a ping sent behind a slow command is answered before it."""
    group = new_group()
    gate = asyncio.Event()
    original = realtime_sockets.Realtime.acan_subscribe

    async def slow(self: Any, user: Any, group: str) -> bool:
        await gate.wait()
        return True

    realtime_sockets.Realtime.acan_subscribe = slow  # type: ignore[method-assign]
    try:
        async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
            client = Client(ws)
            sub = await client.send("subscribe", group=group)
            unsub = await client.send("unsubscribe", group=group)
            assert (await client.call("ping"))["result"] == "pong"
            gate.set()
            assert "result" in await client.reply(sub)
            assert "result" in await client.reply(unsub)
            await broadcast(group, {"late": True})
            await client.call("subscribe", group=new_group())
            assert client.pushes == []
    finally:
        realtime_sockets.Realtime.acan_subscribe = original  # type: ignore[method-assign]


async def test_a_guard_refuses_after_the_handshake() -> None:
    """@login_required on a RealtimeView: accepted then closed with 4401, which a browser can read."""
    async with connect("/ws/realtime/private/", subprotocols=[PROTOCOL]) as ws:
        assert ws.subprotocol == PROTOCOL
        assert await ws.wait_closed() == CloseCode.UNAUTHORIZED


def test_tether_js_is_served_by_staticfiles() -> None:
    """{% static "tether/tether.js" %} resolves: the app's static directory holds tether.js and its types."""
    installed = ["django.contrib.staticfiles", *settings.INSTALLED_APPS]
    with override_settings(INSTALLED_APPS=installed, STATIC_URL="/static/"):
        for name in ("tether/tether.js", "tether/tether.d.ts"):
            assert finders.find(name), name
        html = engines["django"].from_string('{% load static %}{% static "tether/tether.js" %}').render({})
        assert html == "/static/tether/tether.js"


HISTORY = {"GROUPS": {"public.h*": {"history": 5}}}


@override_settings(TETHER=HISTORY)
async def test_positions_recovery_and_history() -> None:
    """In a history group: pushes carry positions, subscribe with since replays what was missed once, in order."""
    group = new_group("public.h")
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        first = (await client.call("subscribe", group=group))["result"]
        assert first["recovered"] is False and first["position"]["offset"] == 0
        for n in range(3):
            await broadcast(group, {"n": n})
        pushes = [await client.push() for _ in range(3)]
        assert [p["position"]["offset"] for p in pushes] == [1, 2, 3]
        assert [p["data"] for p in pushes] == [{"n": 0}, {"n": 1}, {"n": 2}]
        reply = await client.call("publish", group=group, data={"n": 3})
        assert reply["result"]["position"] == {"offset": 4, "epoch": first["position"]["epoch"]}
        page = (await client.call("history", group=group, since=pushes[0]["position"], limit=2))["result"]
        assert page["recovered"] is True
        assert [(m["position"]["offset"], m["data"]) for m in page["messages"]] == [(2, {"n": 1}), (3, {"n": 2})]
        assert (await client.call("history", group=group, limit=0))["error"]["code"] == "bad_request"
        await client.call("subscribe", group="public.plain")
        assert (await client.call("history", group="public.plain"))["error"]["code"] == "no_history"
    since = pushes[1]["position"]  # a client that saw n=1 comes back
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        again = (await client.call("subscribe", group=group, since=since))["result"]
        assert again["recovered"] is True
        replayed = [await client.push() for _ in range(2)]
        assert [(p["position"]["offset"], p["data"]) for p in replayed] == [(3, {"n": 2}), (4, {"n": 3})]
        await broadcast(group, {"n": 4})
        assert (await client.push())["position"]["offset"] == 5
    for n in range(5, 12):  # past the window of 5: what came after `since` is partly gone
        await broadcast(group, {"n": n})
    async with connect(PATH, subprotocols=[PROTOCOL]) as ws:
        client = Client(ws)
        lost = (await client.call("subscribe", group=group, since=since))["result"]
        assert lost["recovered"] is False and lost["position"]["offset"] == 12
        stale = await client.call("subscribe", group=new_group("public.h"), since={"offset": 1, "epoch": "old"})
        assert stale["result"]["recovered"] is False
        await broadcast(group, {"n": 12})
        assert (await client.push())["data"] == {"n": 12}  # nothing old was replayed before it
        assert (await client.call("subscribe", group=group, since={"offset": -1, "epoch": "e"}))["error"][
            "code"
        ] == "bad_request"
