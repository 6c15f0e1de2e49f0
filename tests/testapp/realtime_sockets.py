"""The realtime endpoint of the tests: who may subscribe and publish where."""

from __future__ import annotations

from typing import Any

from tether import login_required
from tether.realtime import RealtimeView


class Realtime(RealtimeView):
    """Anyone may subscribe to ``public.*`` and ``room.*`` and publish to ``public.*``; ``crash.*`` hooks raise."""

    def can_subscribe(self, user: Any, group: str) -> bool:
        if group.startswith("crash."):
            raise RuntimeError("can_subscribe crashed")
        return group.startswith(("public.", "room."))

    def can_publish(self, user: Any, group: str, data: Any) -> bool:
        return group.startswith("public.")

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
