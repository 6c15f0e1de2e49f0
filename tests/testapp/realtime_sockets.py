"""The realtime endpoint of the tests: who may subscribe and publish where."""

from __future__ import annotations

from typing import Any

from tether import login_required
from tether.realtime import ErrorCode, ProtocolError, RealtimeView


class Realtime(RealtimeView):
    """Anyone may subscribe to ``public.*`` and ``room.*`` and publish to ``public.*``; ``crash.*`` hooks raise.

    ``prepare_publish``: in ``public.stamped*`` a message is ``{"text": str}``, broadcast stamped with
    the author (None when anonymous) and a count of this connection's messages; ``public.crash*`` raises.
    """

    stamped = 0

    def can_subscribe(self, user: Any, group: str) -> bool:
        if group.startswith("crash."):
            raise RuntimeError("can_subscribe crashed")
        return group.startswith(("public.", "room."))

    def can_publish(self, user: Any, group: str, data: Any) -> bool:
        return group.startswith("public.")

    async def prepare_publish(self, group: str, data: Any) -> Any:
        if group.startswith("public.crash"):
            raise RuntimeError("prepare_publish crashed")
        if not group.startswith("public.stamped"):
            return await super().prepare_publish(group, data)
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text:
            raise ProtocolError(ErrorCode.BAD_REQUEST, 'send {"text": "..."}')
        self.stamped += 1
        user = self.user.get_username() if self.user.is_authenticated else None
        return {"text": text, "user": user, "n": self.stamped}

    def presence_info(self) -> Any:
        name = self.socket.query_params.get("name")
        return {"name": name} if name else None

    async def acan_publish(self, user: Any, group: str, data: Any) -> bool:
        if group == "public.kick":  # the server ends a subscription: {"group": ...} says which
            await self.end_subscription(data["group"], "kicked")
            return False
        return await super().acan_publish(user, group, data)


class StaffRealtime(RealtimeView):
    """Async hooks: only staff may subscribe, to anything."""

    async def acan_subscribe(self, user: Any, group: str) -> bool:
        return bool(user.is_staff)


@login_required
class PrivateRealtime(Realtime):
    """Logged-in users only: an anonymous client is accepted, then closed with 4401."""
