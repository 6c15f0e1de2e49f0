"""The same behaviour written the way tether's docs recommend (this module is the URLconf).

The echo is the README's function handler; fan-out uses ``SocketView.join``/``broadcast``; the
session-authenticated greeting resolves the user from Django's session cookie.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import aget_user

from tether import SocketView, WebSocket
from tether.urls import websocket


async def echo(socket: WebSocket) -> None:
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text("pong!" if text == "ping" else text)


class Sub(SocketView):
    async def connect(self) -> None:
        await self.accept()
        await self.join(settings.GROUP)  # type: ignore[attr-defined]
        await self.send_text("ready")


class Pub(SocketView):
    async def receive(self, text: str) -> None:
        await self.broadcast(settings.GROUP, text)  # type: ignore[attr-defined]


class Greet(SocketView):
    async def connect(self) -> None:
        from django.contrib.sessions.backends.db import SessionStore

        session = SessionStore(self.socket.cookies.get("sessionid"))
        user = await aget_user(type("Request", (), {"session": session})())
        if not user.is_authenticated:
            await self.close(4401)
            return
        await self.accept()
        await self.send_text(user.get_username())


urlpatterns = [
    websocket("ws/echo/", echo, name="echo"),
    websocket("ws/sub/", Sub.as_handler(), name="sub"),
    websocket("ws/pub/", Pub.as_handler(), name="pub"),
    websocket("ws/auth/", Greet.as_handler(), name="auth"),
]
