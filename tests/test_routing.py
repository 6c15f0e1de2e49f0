"""WebSocket routes in the URLconf: resolution, include/namespaces, reverse, 426, unknown paths."""

from __future__ import annotations

import logging

import pytest
from django.template import Context, Template
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.urls import reverse

from tether import CloseCode
from tether.routing import resolve_websocket
from tether.testing import Rejected, connect
from tether.urls import websocket


def test_reverse_works_for_websocket_routes() -> None:
    """reverse() finds websocket routes, with converters and through include() namespaces."""
    assert reverse("echo") == "/ws/echo/"
    assert reverse("info", kwargs={"n": 7}) == "/ws/info/7/"
    assert reverse("chat:room", kwargs={"room": "lobby"}) == "/ws/chat/lobby/"
    assert reverse("re-info", kwargs={"code": "123"}) == "/ws/re/123/"


def test_resolve_only_takes_websocket_routes() -> None:
    """An HTTP pattern never resolves as a websocket route; unknown paths resolve to None."""
    assert resolve_websocket("/ws/echo/") is not None
    assert resolve_websocket("/http-only/") is None
    assert resolve_websocket("/nope/") is None


def test_websocket_rejects_a_class() -> None:
    """Passing a SocketView class instead of .as_handler() is a TypeError naming the fix."""
    from tests.testapp.sockets import Room

    with pytest.raises(TypeError, match=r"Room.as_handler\(\)"):
        websocket("x/", Room)  # type: ignore[arg-type]


async def test_converters_and_namespaces_reach_the_handler() -> None:
    """Path converters land in socket.kwargs; include()d routes get their namespaced view name."""
    async with connect("/ws/info/42/?token=abc", headers={"User-Agent": "pytest", "Cookie": "a=b"}) as ws:
        info = await ws.receive_json()
    assert info["kwargs"] == {"n": 42}
    assert info["query"] == {"token": "abc"}
    assert info["agent"] == "pytest"
    assert info["cookies"] == {"a": "b"}
    assert info["route"] == "info"
    async with connect("/ws/chat/lobby/") as ws:
        assert await ws.receive_json() == {"greeting": "hello", "room": "lobby"}
    async with connect("/ws/chat/shout/x/") as ws:
        assert (await ws.receive_json())["greeting"] == "HELLO"


async def test_re_websocket_captures_named_groups() -> None:
    """re_websocket() routes pass named groups as kwargs."""
    async with connect("/ws/re/404/") as ws:
        assert (await ws.receive_json())["kwargs"] == {"code": "404"}


async def test_unknown_path_is_rejected_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown path is refused at handshake with 4404 and a warning naming the path."""
    with caplog.at_level(logging.WARNING, logger="tether"), pytest.raises(Rejected) as info:
        async with connect("/ws/missing/"):
            pass
    assert info.value.code == CloseCode.NOT_FOUND
    assert "/ws/missing/" in caplog.text and "no URL pattern matches" in caplog.text


async def test_http_path_is_rejected_with_an_explanation(caplog: pytest.LogCaptureFixture) -> None:
    """A websocket to an HTTP route is refused, and the log says it is an HTTP view."""
    with caplog.at_level(logging.WARNING, logger="tether"), pytest.raises(Rejected):
        async with connect("/http-only/"):
            pass
    assert "not a websocket() route" in caplog.text


@pytest.mark.django_db
def test_http_get_on_websocket_route_answers_426() -> None:
    """A plain HTTP GET to a websocket route gets 426 with the proxy hint (no Upgrade header under WSGI)."""
    response = Client().get("/ws/echo/")
    assert response.status_code == 426
    assert "Upgrade" not in response  # a hop-by-hop header, which WSGI forbids
    assert b"proxy" in response.content and b"Upgrade" in response.content


@pytest.mark.django_db
async def test_http_get_on_websocket_route_under_asgi_names_the_upgrade() -> None:
    """Under ASGI the 426 carries Upgrade: websocket, as RFC 9110 asks of a 426."""
    response = await AsyncClient().get("/ws/echo/")
    assert response.status_code == 426
    assert response["Upgrade"] == "websocket"


def test_websocket_url_tag_picks_scheme_and_host() -> None:
    """{% websocket_url %} gives ws:// over HTTP and wss:// over HTTPS, with the request's host."""
    template = Template('{% load tether %}{% websocket_url "chat:room" room="lobby" %}')
    plain = RequestFactory().get("/", HTTP_HOST="localhost")
    secure = RequestFactory().get("/", secure=True, HTTP_HOST="localhost")
    assert template.render(Context({"request": plain})) == "ws://localhost/ws/chat/lobby/"
    assert template.render(Context({"request": secure})) == "wss://localhost/ws/chat/lobby/"
    assert template.render(Context({})) == "/ws/chat/lobby/"


async def test_resolution_follows_urlconf_changes() -> None:
    """The resolution cache is cleared when ROOT_URLCONF changes."""
    assert resolve_websocket("/ws/echo/") is not None
    with override_settings(ROOT_URLCONF="tests.urls_alt"):
        assert resolve_websocket("/ws/echo/") is None
        assert resolve_websocket("/alt/echo/") is not None
    assert resolve_websocket("/ws/echo/") is not None


async def test_tether_urlconf_setting_overrides_root_urlconf() -> None:
    """TETHER["URLCONF"] chooses where websocket routes are looked up."""
    with override_settings(TETHER={"URLCONF": "tests.urls_alt"}):
        async with connect("/alt/echo/") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong!"
