"""django-tether: real-time WebSockets for Django on plain ASGI."""

from .codes import CloseCode
from .exceptions import BackendUnavailable, Disconnected, InvalidGroup, InvalidMessage, InvalidState, TetherError
from .views import SocketView
from .websocket import ConnectionState, WebSocket

__all__ = [
    "BackendUnavailable",
    "CloseCode",
    "ConnectionState",
    "Disconnected",
    "InvalidGroup",
    "InvalidMessage",
    "InvalidState",
    "SocketView",
    "TetherError",
    "WebSocket",
]

__version__ = "0.1.0"
