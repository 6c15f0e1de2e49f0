"""The chat example's URLconf, its socket answering the handshake with an ``X-Worker-Pid`` header.

Test settings only (tests/chat_settings.py): the deployment tests connect until
two different worker processes have answered.
"""

import os
from typing import Any

from django.urls import include, path

from chat.sockets import ChatRealtime
from tether.urls import websocket


class PidChatRealtime(ChatRealtime):
    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, {**dict(headers or {}), "X-Worker-Pid": str(os.getpid())})


urlpatterns = [
    websocket("ws/", PidChatRealtime.as_handler(), name="pid-realtime"),
    path("", include("chatsite.urls")),
]
