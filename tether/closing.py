"""How a handler's end becomes a close code: the one exception-to-close policy.

A peer leaving (``Disconnected``) is the normal end; ``InvalidMessage``
closes with its own code and a warning; any other exception closes with 1011
and is logged with its traceback (and handed to ``tether.testing``, which
re-raises it in the test). Used by the router, ``SocketView`` and the hub's
writers (a raising ``group_message`` hook).
"""

from __future__ import annotations

import logging

from django.utils.encoding import escape_uri_path

from .codes import CloseCode
from .exceptions import Disconnected, InvalidMessage
from .websocket import WebSocket

__all__ = ["close_for_exception"]

logger = logging.getLogger("tether.routing")


async def close_for_exception(socket: WebSocket, exc: BaseException) -> None:
    """Close ``socket`` as ``exc`` demands: nothing for ``Disconnected``, the
    message's code for ``InvalidMessage``, 1011 and a traceback for anything else.
    """
    if isinstance(exc, Disconnected):
        return  # the client left (or tether closed the socket): the normal end of a connection
    if isinstance(exc, InvalidMessage):
        logger.warning("Closing websocket %s with %d: %s", escape_uri_path(socket.path), exc.code, exc)
        await socket.terminate(exc.code, str(exc))
        return
    logger.error(
        "Handler for websocket %s raised; closing with %d",
        escape_uri_path(socket.path),
        CloseCode.INTERNAL_ERROR,
        exc_info=exc,
    )
    sink = socket.scope.get("extensions", {}).get("tether.testing")
    if sink is not None:  # tether.testing re-raises it in the test
        sink["exceptions"].append(exc)
    await socket.terminate(CloseCode.INTERNAL_ERROR)
