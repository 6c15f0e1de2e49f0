"""The same behaviour written the way tether's docs recommend (this module is the URLconf).

The echo is the README's function handler; fan-out uses ``SocketView.join``/``broadcast``; the
protocol fan-out's subscribers speak ``tether.v1`` to a ``RealtimeView`` (docs/protocol.md); the
greeting is guarded by ``@login_required`` and reads ``self.user`` (Django's session cookie). The
Origin check, the message size limit and the rest of tether's defaults stay on.
"""

from __future__ import annotations

from django.conf import settings

from tether import SocketView, WebSocket, login_required
from tether.realtime import RealtimeView
from tether.urls import websocket


async def echo(socket: WebSocket) -> None:
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text("pong!" if text == "ping" else text)


async def hello(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text("bench")


class Sub(SocketView):
    async def connect(self) -> None:
        await self.accept()
        await self.join(settings.GROUP)
        await self.send_text("ready")


class Pub(SocketView):
    async def receive(self, text: str) -> None:
        await self.broadcast(settings.GROUP, text)


class Realtime(RealtimeView):
    """The protocol endpoint: anyone may subscribe to the bench group (one command per subscriber)."""

    def can_subscribe(self, user: object, group: str) -> bool:
        return group == settings.GROUP


@login_required
class Greet(SocketView):
    async def connect(self) -> None:
        await self.accept()
        await self.send_text(self.user.get_username())


urlpatterns = [
    websocket("ws/echo/", echo, name="echo"),
    websocket("ws/hello/", hello, name="hello"),
    websocket("ws/sub/", Sub.as_handler(), name="sub"),
    websocket("ws/pub/", Pub.as_handler(), name="pub"),
    websocket("ws/rt/", Realtime.as_handler(), name="realtime"),
    websocket("ws/auth/", Greet.as_handler(), name="auth"),
]
