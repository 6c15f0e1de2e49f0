from django.http import HttpResponse
from django.urls import path

from tether.urls import websocket

from .testapp import core_sockets

urlpatterns = [
    websocket("core/probe/<str:group>/", core_sockets.probe, name="probe"),
    websocket("core/hooked/<str:group>/", core_sockets.HookedView.as_handler(), name="hooked"),
    websocket("core/quiet/<str:group>/", core_sockets.quiet, name="quiet"),
    websocket("core/late-user/", core_sockets.late_user, name="late-user"),
    websocket("core/kwargs/<str:room>/", core_sockets.kwargs_mutator, name="kwargs"),
    path("core/shadow/", lambda request: HttpResponse("http"), name="shadow-http"),  # earlier, same path
    websocket("core/shadow/", core_sockets.shadow_echo, name="shadow-ws"),
    websocket("core/fuzz/<int:n>/", core_sockets.fuzz_handler, name="fuzz"),
]
