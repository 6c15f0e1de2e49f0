"""Handlers used by the test suite, one per behaviour under test."""

from __future__ import annotations

from typing import Any

from tether import InvalidMessage, SocketView, WebSocket, login_required, permission_required, require

from .models import Message


async def echo(socket: WebSocket) -> None:
    """The tutorial's ping/pong."""
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text("pong!" if text == "ping" else text)


async def echo_json(socket: WebSocket) -> None:
    await socket.accept()
    async for data in socket.iter_json():
        await socket.send_json({"echo": data})


async def echo_bytes(socket: WebSocket) -> None:
    await socket.accept()
    async for data in socket.iter_bytes():
        await socket.send_bytes(data[::-1])


async def boom(socket: WebSocket) -> None:
    """Accepts, then raises on the first message."""
    await socket.accept()
    text = await socket.receive_text()
    raise RuntimeError(f"boom: {text}")


async def info(socket: WebSocket) -> None:
    """Reports what the socket saw of the handshake."""
    await socket.accept(subprotocol=socket.subprotocols[0] if socket.subprotocols else None, headers={"X-Tether": "1"})
    await socket.send_json(
        {
            "path": socket.path,
            "kwargs": socket.kwargs,
            "query": socket.query_params.dict(),
            "cookies": socket.cookies,
            "agent": socket.headers.get("User-Agent"),
            "subprotocols": socket.subprotocols,
            "route": socket.resolver_match.view_name if socket.resolver_match else None,
        }
    )
    await socket.receive()


async def refuse(socket: WebSocket) -> None:
    """Returns without accepting: the handshake is refused."""


async def caught_json(socket: WebSocket) -> None:
    """Catches malformed JSON and carries on."""
    await socket.accept()
    while True:
        try:
            data = await socket.receive_json()
        except InvalidMessage as exc:
            await socket.send_json({"error": str(exc)})
            continue
        await socket.send_json(data)


class Room(SocketView):
    """Joins a room, echoes JSON with the room name, counts disconnects."""

    disconnects: list[tuple[str, int]] = []
    greeting = "hello"

    async def connect(self) -> None:
        self.room = self.kwargs["room"]
        if self.room == "closed":
            await self.close()
            return
        await self.accept()
        await self.send_json({"greeting": self.greeting, "room": self.room})

    async def receive_json(self, data: Any) -> None:
        if data.get("crash"):
            raise ValueError("crash requested")
        await self.send_json({"room": self.room, "data": data})

    async def receive_bytes(self, data: bytes) -> None:
        await self.send_bytes(data.upper())

    async def disconnect(self, code: int) -> None:
        type(self).disconnects.append((self.kwargs.get("room", ""), code))


class TextOnly(SocketView):
    """Overrides receive(): raw text, no JSON."""

    async def receive(self, text: str) -> None:
        await self.send_text(text.upper())


class Silent(SocketView):
    """Overrides nothing but connect: any message closes with 1003."""


class Notes(SocketView):
    """Writes and reads rows with the async ORM (the alias comes from the query string)."""

    async def connect(self) -> None:
        self.using = self.socket.query_params.get("db", "default")
        await self.accept()

    async def receive_json(self, data: dict[str, Any]) -> None:
        await Message.objects.using(self.using).acreate(room=self.kwargs["room"], text=data["text"])
        texts = [m.text async for m in Message.objects.using(self.using).filter(room=self.kwargs["room"])]
        count = await Message.objects.using(self.using).acount()
        await self.send_json({"texts": texts, "count": count})


async def orm_counts(socket: WebSocket) -> None:
    """Counts rows two ways: sync_to_async around sync ORM code, and (wrongly) sync ORM directly."""
    from asgiref.sync import sync_to_async

    using = socket.query_params.get("db", "default")
    await socket.accept()
    async for command in socket.iter_text():
        if command == "wrapped":
            count = await sync_to_async(lambda: Message.objects.using(using).count())()
            await socket.send_json({"count": count})
        else:
            Message.objects.using(using).count()  # raises SynchronousOnlyOperation in async code


async def echo_any(socket: WebSocket) -> None:
    """Echoes text as text and binary as binary (what the Autobahn testsuite expects)."""
    await socket.accept()
    while True:
        data = await socket.receive()
        if isinstance(data, str):
            await socket.send_text(data)
        else:
            await socket.send_bytes(data)


# -- auth, guards and limits (tests/test_auth.py, test_security.py, test_limits.py) --


async def whoami(socket: WebSocket) -> None:
    """Reports the user and a session value, then echoes text."""
    user = await socket.auser()
    await socket.accept()
    color = await socket.session.aget("color")
    await socket.send_json({"user": user.get_username() or None, "same": socket.user is user, "color": color})
    async for text in socket.iter_text():
        await socket.send_text(text)


private = login_required(whoami)


@permission_required("testapp.add_message")
async def post_message(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_json({"user": socket.user.get_username()})
    await socket.receive()


@require(lambda socket: socket.user.is_staff)
async def staff_only(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text("staff")
    await socket.receive()


async def _has_token(socket: WebSocket) -> bool:
    return socket.query_params.get("token") == "sesame"


@require(_has_token, code=4418, reason="bad token")
async def token_only(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text("in")
    await socket.receive()


@login_required
class Members(SocketView):
    """A members-only room: greets self.user, counts connect() and disconnect() calls."""

    calls: list[str] = []

    async def connect(self) -> None:
        type(self).calls.append("connect")
        await self.accept()
        await self.send_json({"hello": self.user.get_username()})

    async def receive_json(self, data: Any) -> None:
        await self.send_json(data)

    async def disconnect(self, code: int) -> None:
        type(self).calls.append(f"disconnect {code}")


@permission_required("testapp.change_message")
class Editors(Members):
    """Members who may also edit: guards stack on subclasses, the parent keeps its own."""


class WhoView(SocketView):
    """Unguarded: self.user is resolved before connect() (AnonymousUser when not logged in)."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"user": self.user.get_username() or None, "auth": self.user.is_authenticated})


class EchoView(SocketView):
    """Echoes JSON and bytes: the fuzz target."""

    async def receive_json(self, data: Any) -> None:
        await self.send_json(data)

    async def receive_bytes(self, data: bytes) -> None:
        await self.send_bytes(data)


async def me(socket: WebSocket) -> None:
    """Reports the user, its groups and the offered subprotocols (accepting the first); then echoes text."""
    user = await socket.auser()
    await socket.accept(socket.subprotocols[0] if socket.subprotocols else None)
    await socket.send_json(
        {"user": user.get_username() or None, "groups": sorted(socket.groups), "subprotocols": socket.subprotocols}
    )
    async for text in socket.iter_text():
        await socket.send_text(text)
