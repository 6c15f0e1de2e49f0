"""The ASGI entry point: http -> Django, websocket -> tether, lifespan -> tether.

Django's own ``ASGIHandler`` speaks only http; this wraps it so one callable
serves a whole project, answers lifespan (no "lifespan unsupported" warning
from the server) and closes open sockets with 1001 at shutdown.
"""

from __future__ import annotations

import logging
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

from ._types import Receive, Scope, Send
from .checks import check_installed
from .codes import CloseCode
from .hub import get_hub, stop_hub
from .routing import WebSocketRouter

__all__ = ["TetherASGIHandler", "get_asgi_application"]

logger = logging.getLogger("tether.asgi")


class TetherASGIHandler:
    """One ASGI application for a Django project with WebSocket routes."""

    def __init__(self, http_application: Any = None) -> None:
        self.http: Any = http_application if http_application is not None else ASGIHandler()
        self.websocket = WebSocketRouter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        else:
            raise ValueError(f"tether can't serve ASGI scope type {kind!r}")

    async def startup(self) -> None:
        """Run at server start, before any connection is served: starts the hub and its backend."""
        await get_hub()

    async def shutdown(self) -> None:
        """Close the sockets still open with 1001 (going away) so clients reconnect elsewhere."""
        count = len(self.websocket.sockets)
        await self.websocket.close_all(CloseCode.GOING_AWAY)
        if count:
            logger.info("Closed %d open websocket(s) with %d at shutdown", count, CloseCode.GOING_AWAY)
        await stop_hub()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("tether failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    logger.exception("tether failed to shut down cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def get_asgi_application() -> TetherASGIHandler:
    """Set up Django and return the project's ASGI application (use in ``asgi.py``)."""
    django.setup(set_prefix=False)
    for message in check_installed():  # a check that can't be registered when tether isn't installed
        logging.getLogger("tether.checks").warning("%s", message)
    return TetherASGIHandler()
