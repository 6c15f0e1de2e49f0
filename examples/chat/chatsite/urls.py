from django.urls import include, path

from chat import views
from chat.sockets import ChatSocket
from tether.urls import websocket

urlpatterns = [  # static files: chatsite/asgi.py (DEBUG) or nginx
    path("", views.home, name="home"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("announce/", views.announce, name="announce"),
    path("signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),  # login/, logout/, password_change/, ...
    websocket("ws/rooms/<slug:room>/", ChatSocket.as_handler(), name="chat-socket"),
]
