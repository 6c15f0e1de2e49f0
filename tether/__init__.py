"""django-tether: real-time WebSockets for Django on plain ASGI."""

from .auth import login_required, permission_required, require
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
    "login_required",
    "permission_required",
    "require",
]

__version__ = "0.1.0"
