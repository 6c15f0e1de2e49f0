"""django-tether: real-time WebSockets for Django on plain ASGI."""

from .codes import CloseCode
from .exceptions import BackendUnavailable, Disconnected, InvalidGroup, InvalidMessage, InvalidState, TetherError
from .groups import user_group
from .guards import login_required, permission_required, require
from .publish import broadcast, broadcast_on_commit, broadcast_sync
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
    "broadcast",
    "broadcast_on_commit",
    "broadcast_sync",
    "login_required",
    "permission_required",
    "require",
    "user_group",
]

__version__ = "0.1.0"
