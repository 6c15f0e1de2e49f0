from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.views import LogoutView, PasswordChangeView
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from tether.auth import token_view
from tether.urls import re_websocket, websocket

from .testapp import group_sockets, realtime_sockets, sockets


def set_password_of(request: HttpRequest, username: str) -> HttpResponse:
    """What the admin's password form does: set another user's password, then update_session_auth_hash()."""
    user = get_user_model().objects.get(username=username)
    user.set_password(request.POST["password"])
    user.save()
    update_session_auth_hash(request, user)
    return HttpResponse("changed")


chat_patterns = (
    [
        websocket("<slug:room>/", sockets.Room.as_handler(), name="room"),
        websocket("shout/<slug:room>/", sockets.Room.as_handler(greeting="HELLO"), name="shout"),
    ],
    "chat",
)

urlpatterns = [
    path("", lambda request: HttpResponse("home"), name="home"),
    path("http-only/", lambda request: HttpResponse("http"), name="http-only"),
    websocket("ws/echo/", sockets.echo, name="echo"),
    websocket("ws/json/", sockets.echo_json, name="json"),
    websocket("ws/bytes/", sockets.echo_bytes, name="bytes"),
    websocket("ws/boom/", sockets.boom, name="boom"),
    websocket("ws/info/<int:n>/", sockets.info, name="info"),
    websocket("ws/refuse/", sockets.refuse, name="refuse"),
    websocket("ws/caught/", sockets.caught_json, name="caught"),
    websocket("ws/text/", sockets.TextOnly.as_handler(), name="text"),
    websocket("ws/silent/", sockets.Silent.as_handler(), name="silent"),
    websocket("ws/notes/<slug:room>/", sockets.Notes.as_handler(), name="notes"),
    websocket("ws/orm/", sockets.orm_counts, name="orm"),
    websocket("ws/any/", sockets.echo_any, name="any"),
    re_websocket(r"^ws/re/(?P<code>[0-9]{3})/$", sockets.info, name="re-info"),
    path("ws/chat/", include(chat_patterns)),
    websocket("ws/group/<str:group>/", group_sockets.GroupMember.as_handler(), name="group"),
    websocket("ws/censored/<str:group>/", group_sockets.Censored.as_handler(), name="censored"),
    websocket("ws/broken-hook/<str:group>/", group_sockets.BrokenHook.as_handler(), name="broken-hook"),
    websocket("ws/early/<str:group>/", group_sockets.early_joiner, name="early"),
    websocket("ws/history/<str:group>/", group_sockets.HistoryMember.as_handler(), name="history"),
    websocket("ws/auth/whoami/", sockets.whoami, name="whoami"),
    websocket("ws/auth/private/", sockets.private, name="private"),
    websocket("ws/auth/post/", sockets.post_message, name="post-message"),
    websocket("ws/auth/staff/", sockets.staff_only, name="staff"),
    websocket("ws/auth/token/", sockets.token_only, name="token"),
    websocket("ws/auth/members/", sockets.Members.as_handler(), name="members"),
    websocket("ws/auth/editors/", sockets.Editors.as_handler(), name="editors"),
    websocket("ws/auth/who/", sockets.WhoView.as_handler(), name="who"),
    websocket("ws/echo-view/", sockets.EchoView.as_handler(), name="echo-view"),
    websocket("ws/auth/me/", sockets.me, name="me"),
    websocket("ws/realtime/", realtime_sockets.Realtime.as_handler(), name="realtime"),
    websocket("ws/realtime/staff/", realtime_sockets.StaffRealtime.as_handler(), name="realtime-staff"),
    websocket("ws/realtime/private/", realtime_sockets.PrivateRealtime.as_handler(), name="realtime-private"),
    path("tether/token/", token_view, name="tether-token"),
    path("accounts/logout/", LogoutView.as_view(next_page="/"), name="logout"),
    path("accounts/password_change/", PasswordChangeView.as_view(success_url="/"), name="password_change"),
    path("accounts/set-password/<str:username>/", set_password_of, name="set-password-of"),
]
