"""The ASGI entry point: http -> Django, websocket -> tether, lifespan -> tether.

Django's own ``ASGIHandler`` speaks only http; this wraps it so one callable
serves a whole project, answers lifespan (no "lifespan unsupported" warning
from the server) and closes open sockets with 1001 at shutdown.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

from ._types import Receive, Scope, Send
from .checks import check_installed, check_websocket_server
from .codes import CloseCode
from .hub import get_hub, stop_hub
from .routing import WebSocketRouter

__all__ = ["RefusalIsNotAnError", "TetherASGIHandler", "get_asgi_application"]

logger = logging.getLogger("tether.asgi")

_UNFINISHED_HANDSHAKE = "ASGI callable returned without completing handshake."
_refused_with_response: ContextVar[bool] = ContextVar("tether_refused_with_response", default=False)


class RefusalIsNotAnError(logging.Filter):
    """Drops one false ERROR of uvicorn's ``websockets-sansio`` implementation (uvicorn < 0.55).

    Those versions do not count a ``websocket.http.response`` (tether's answer to
    a refused handshake: login required, Origin, unknown route) as a finished
    handshake, so after every refusal uvicorn logs ``ERROR: ASGI callable
    returned without completing handshake.`` although the client got its 403.
    ``TetherASGIHandler`` installs this filter on the ``uvicorn.error`` logger; it
    drops that exact message, and only for a connection that tether answered
    with such a response (any other occurrence is still logged). Nothing to do
    on uvicorn >= 0.55 or on another server.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for the false handshake error of a connection tether refused; True for anything else."""
        return not (record.msg == _UNFINISHED_HANDSHAKE and _refused_with_response.get())


_REFUSAL_FILTER = RefusalIsNotAnError()
_affected: dict[type, bool] = {}


def _counts_a_response_as_unfinished(send: Send) -> bool:
    """Whether the server behind ``send`` is uvicorn's websockets-sansio before 0.55 (see RefusalIsNotAnError)."""
    protocol = type(getattr(send, "__self__", None))
    affected = _affected.get(protocol)
    if affected is None:
        affected = False
        if protocol.__module__ == "uvicorn.protocols.websockets.websockets_sansio_impl":
            import uvicorn  # the server that is running us: already imported

            version = tuple(int(part) for part in uvicorn.__version__.split(".")[:2] if part.isdigit())
            affected = version < (0, 55)
        _affected[protocol] = affected
    return affected


class TetherASGIHandler:
    """One ASGI application for a Django project with WebSocket routes."""

    def __init__(self, http_application: Any = None) -> None:
        self.http: Any = http_application if http_application is not None else ASGIHandler()
        self.websocket = WebSocketRouter()
        uvicorn_errors = logging.getLogger("uvicorn.error")
        if _REFUSAL_FILTER not in uvicorn_errors.filters:
            uvicorn_errors.addFilter(_REFUSAL_FILTER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            if _counts_a_response_as_unfinished(send):
                await self._serve_noting_refusal(scope, receive, send)
            else:
                await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        else:
            raise ValueError(f"tether can't serve ASGI scope type {kind!r}")

    async def _serve_noting_refusal(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a websocket, remembering (for ``RefusalIsNotAnError``) whether it was refused with a response.

        The flag is set in this task's context, which is uvicorn's ``run_asgi``
        task: the one that logs the false error right after this returns.
        """
        refused = False

        async def noting_send(message: Any) -> None:
            nonlocal refused
            if message["type"] == "websocket.http.response.start":
                refused = True
            await send(message)

        try:
            await self.websocket(scope, receive, noting_send)
        finally:
            if refused:
                _refused_with_response.set(True)

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
        """Serve the ASGI lifespan protocol: ``startup()`` and ``shutdown()``, each reported as
        complete or, with the exception's message, failed (logged with its traceback)."""
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
    """Set up Django and return the project's ASGI application (use in ``asgi.py``).

    Logs (logger ``tether.checks``) the traps a server start should not hide:
    tether.W003 (``tether`` not installed) and tether.E001 (uvicorn installed
    without a WebSocket library, so every handshake is answered as plain HTTP).
    """
    django.setup(set_prefix=False)
    checks_logger = logging.getLogger("tether.checks")
    for message in check_installed():  # a check that can't be registered when tether isn't installed
        checks_logger.warning("%s", message)
    for message in check_websocket_server():  # also in `manage.py check`, but a server start must say it
        checks_logger.error("%s", message)
    return TetherASGIHandler()
