"""Handlers for the hostile-client tests (tests/test_hostile.py), served as ``TETHER["URLCONF"]``.

``ws/victim/<group>/`` joins a group and never sends; ``ws/control/`` lets the
test broadcast to it and read what the server process holds: the hub's
counters and how the victims' handlers ended. ``ws/nan/`` tries to send NaN.
Everything of tests.urls is served too.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.urls import include, path

from tether import Disconnected, WebSocket, broadcast
from tether.hub import current_hub
from tether.urls import websocket

LIVE: set[str] = set()  # victims whose handler is running
ENDED: list[dict[str, Any]] = []  # how each victim's handler ended


async def victim(socket: WebSocket) -> None:
    """Joins ``<group>``, says so, then waits in receive() for ever (its client never reads)."""
    name = socket.kwargs["group"]
    LIVE.add(name)
    outcome: dict[str, Any] = {"group": name}
    try:
        await socket.join(name)
        await socket.accept()
        await socket.send_json({"joined": name})
        await socket.receive()
    except Disconnected as exc:
        outcome["disconnected"] = exc.code
        raise
    finally:
        outcome["ended_at"] = time.time()
        LIVE.discard(name)
        ENDED.append(outcome)


async def control(socket: WebSocket) -> None:
    """JSON commands: {"broadcast": group, "count": n, "size": bytes} and {"stats": true}."""
    await socket.accept()
    async for data in socket.iter_json():
        if "broadcast" in data:
            frame = "x" * int(data["size"])
            for _ in range(int(data["count"])):
                await broadcast(data["broadcast"], frame)
            await socket.send_json({"sent": data["count"], "at": time.time()})
        elif "stats" in data:
            hub = current_hub()
            await socket.send_json(
                {
                    "hub": hub.stats() if hub is not None else None,
                    "live": sorted(LIVE),
                    "ended": ENDED,
                    "now": time.time(),
                }
            )


async def nan(socket: WebSocket) -> None:
    """Tries to send NaN and Infinity, reports what send_json() said, then a valid sentinel."""
    await socket.accept()
    for value in (math.nan, math.inf):
        try:
            await socket.send_json({"value": value})
        except ValueError as exc:
            await socket.send_json({"refused": str(exc)})
    await socket.send_json({"sentinel": True})
    await socket.receive()


urlpatterns = [
    websocket("ws/victim/<str:group>/", victim, name="victim"),
    websocket("ws/control/", control, name="control"),
    websocket("ws/nan/", nan, name="nan"),
    path("", include("tests.urls")),
]
