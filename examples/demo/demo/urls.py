from django.shortcuts import render
from django.urls import path

from tether import WebSocket
from tether.urls import websocket


async def echo(socket: WebSocket) -> None:
    """The tutorial's ping/pong, done with tether."""
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text("pong!" if text == "ping" else text)


urlpatterns = [
    path("", lambda request: render(request, "echo.html"), name="home"),
    websocket("ws/echo/", echo, name="echo"),
]
