from tether import WebSocket
from tether.urls import websocket


async def crashing(socket: WebSocket) -> None:
    raise KeyError("missing")


urlpatterns = [websocket("crash/", crashing)]
