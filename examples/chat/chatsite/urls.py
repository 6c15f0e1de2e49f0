from django.urls import include, path

from chat import views
from chat.sockets import ChatRealtime
from tether.auth import token_view
from tether.urls import websocket

urlpatterns = [  # static files: chatsite/asgi.py (DEBUG) or nginx
    path("", views.home, name="home"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("rooms/<slug:slug>/messages/", views.room_messages, name="room-messages"),
    path("announce/", views.announce, name="announce"),
    path("signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),  # login/, logout/, password_change/, ...
    websocket("ws/", ChatRealtime.as_handler(), name="realtime"),  # one socket per page: tether.v1
    path("tether/token/", token_view, name="tether-token"),  # a token for ?auth=token pages
]
