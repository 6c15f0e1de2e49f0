from tether.urls import websocket

from .testapp import sockets

urlpatterns = [websocket("alt/echo/", sockets.echo, name="alt-echo")]
