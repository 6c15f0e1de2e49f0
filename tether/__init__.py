"""django-tether: real-time WebSockets for Django on plain ASGI."""

from .codes import CloseCode
from .exceptions import BackendUnavailable, Disconnected, InvalidGroup, InvalidMessage, InvalidState, TetherError
from .groups import user_group
from .guards import login_required, permission_required, require
from .positions import HistoryMessage, HistoryPage, JoinResult, Position
from .presence import PresenceMember, presence, presence_sync
from .publish import broadcast, broadcast_on_commit, broadcast_sync, history, history_sync
from .revocation import aclose_user_sockets, close_user_sockets
from .views import SocketView
from .websocket import ConnectionState, WebSocket

__all__ = [
    "BackendUnavailable",
    "CloseCode",
    "ConnectionState",
    "Disconnected",
    "HistoryMessage",
    "HistoryPage",
    "InvalidGroup",
    "InvalidMessage",
    "InvalidState",
    "JoinResult",
    "Position",
    "PresenceMember",
    "SocketView",
    "TetherError",
    "WebSocket",
    "aclose_user_sockets",
    "broadcast",
    "broadcast_on_commit",
    "broadcast_sync",
    "close_user_sockets",
    "history",
    "history_sync",
    "login_required",
    "permission_required",
    "presence",
    "presence_sync",
    "require",
    "user_group",
]

__version__ = "0.1.0"
