"""Handlers for the hub's tests: join groups, broadcast, transform deliveries."""

from __future__ import annotations

import json
from typing import Any

from tether import BackendUnavailable, Position, SocketView, WebSocket
from tether.backends.base import Frame
from tether.websocket import encode_json


class GroupMember(SocketView):
    """Joins ``<group>`` on connect and says so; JSON commands broadcast, join, leave or crash."""

    async def connect(self) -> None:
        await self.accept()
        await self.join(self.kwargs["group"])
        await self.send_json({"joined": self.kwargs["group"]})

    async def receive_json(self, data: Any) -> None:
        if "broadcast" in data:
            try:
                await self.broadcast(data.get("to", self.kwargs["group"]), data["broadcast"])
            except BackendUnavailable as exc:
                await self.send_json({"unavailable": str(exc)})
        elif "join" in data:
            await self.join(data["join"])
            await self.send_json({"joined": data["join"]})
        elif "leave" in data:
            await self.leave(data["leave"])
            await self.send_json({"left": data["leave"]})
        elif "groups" in data:
            await self.send_json({"groups": sorted(self.socket.groups)})
        elif "crash" in data:
            raise RuntimeError("crash requested")


class Censored(GroupMember):
    """Drops text deliveries containing "secret" and upper-cases the others, per connection."""

    async def group_message(self, group: str, message: Frame) -> Frame | None:
        if isinstance(message, str):
            if "secret" in message and self.socket.query_params.get("clearance") != "yes":
                return None
            return message.upper()
        return message


class BrokenHook(GroupMember):
    """A group_message hook that raises."""

    async def group_message(self, group: str, message: Frame) -> Frame | None:
        raise ValueError("hook failed")


async def early_joiner(socket: WebSocket) -> None:
    """Joins before accept(), as the auth code does for the user's group."""
    await socket.join(socket.kwargs["group"])
    await socket.accept()
    await socket.send_json({"joined": socket.kwargs["group"]})
    async for _ in socket.iter_text():
        pass


class HistoryMember(SocketView):
    """Joins ``<group>`` with ``?offset=&epoch=`` as ``since``, says how that went, and sends every
    group message as ``{"offset", "epoch", "data"}`` (the position goes to the client)."""

    async def connect(self) -> None:
        await self.accept()
        params = self.socket.query_params
        since = Position(int(params["offset"]), params["epoch"]) if "offset" in params else None
        result = await self.join(self.kwargs["group"], since=since)
        position = result.position.as_dict() if result.position is not None else None
        await self.send_json({"recovered": result.recovered, "position": position})

    async def receive_json(self, data: Any) -> None:
        if "broadcast" in data:
            position = await self.broadcast(self.kwargs["group"], data["broadcast"])
            await self.send_json({"published": position.as_dict() if position else None})

    async def group_message(self, group: str, message: Frame, position: Position | None = None) -> Frame | None:
        assert isinstance(message, str)
        if position is None:
            return encode_json({"data": json.loads(message)})
        return encode_json({"offset": position.offset, "epoch": position.epoch, "data": json.loads(message)})
