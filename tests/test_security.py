"""The Origin check against Cross-Site WebSocket Hijacking, in-process and on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import websockets
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings
from websockets.exceptions import InvalidStatus

from tests.servers import Server, serve
from tether import CloseCode
from tether.security import origin_allowed
from tether.testing import Rejected, connect, session_cookie


@pytest.mark.parametrize(
    ("origin", "scheme", "allowed"),
    [
        ("http://testserver", "ws", True),
        ("https://testserver:8443", "ws", True),  # ALLOWED_HOSTS ignores the port, as Django does
        ("HTTP://TESTSERVER", "ws", True),
        ("http://sub.example.com", "ws", True),  # ".example.com" in ALLOWED_HOSTS
        ("http://example.com", "ws", True),
        ("http://evil-example.com", "ws", False),
        ("https://evil.example", "ws", False),
        ("http://testserver", "wss", False),  # over TLS only an https page may connect by host
        ("https://testserver", "wss", True),
        ("null", "ws", False),  # sandboxed iframes and file: pages
        ("", "ws", False),
        ("http://testserver:notaport", "ws", False),
        ("ftp://testserver", "ws", False),
        ("https://app.trusted.example", "ws", True),  # CSRF_TRUSTED_ORIGINS wildcard
        ("http://app.trusted.example", "ws", False),  # ... for its scheme only
        ("https://exact.example:8443", "ws", True),  # CSRF_TRUSTED_ORIGINS exact
        ("https://exact.example", "ws", False),  # ... port included
        ("https://partner.example", "wss", True),  # TETHER["ALLOWED_ORIGINS"]
    ],
)
def test_origin_matching_follows_django_rules(origin: str, scheme: str, allowed: bool) -> None:
    """ALLOWED_HOSTS wildcards, CSRF_TRUSTED_ORIGINS (exact and *.), and TETHER ALLOWED_ORIGINS decide."""
    with override_settings(
        ALLOWED_HOSTS=["testserver", ".example.com"],
        CSRF_TRUSTED_ORIGINS=["https://*.trusted.example", "https://exact.example:8443"],
        TETHER={"ALLOWED_ORIGINS": ["https://partner.example"]},
    ):
        assert origin_allowed(origin, scheme) is allowed


def test_debug_with_empty_allowed_hosts_allows_localhost() -> None:
    """With DEBUG and no ALLOWED_HOSTS, local origins pass, as Django's own host check lets them."""
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert origin_allowed("http://localhost:3000") and origin_allowed("http://127.0.0.1:8000")
        assert not origin_allowed("https://evil.example")


async def test_foreign_origin_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A handshake from another site's page is refused with 4403 and the origin is logged at WARNING."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/echo/", origin="https://evil.example"):
            pass
    assert (info.value.status, info.value.code) == (403, CloseCode.FORBIDDEN)
    [record] = [r for r in caplog.records if r.name == "tether.security"]
    assert record.levelname == "WARNING"
    assert "Origin 'https://evil.example' is not allowed" in record.getMessage()


async def test_own_origin_is_allowed() -> None:
    """A page served from an ALLOWED_HOSTS host connects."""
    async with connect("/ws/echo/", origin="http://testserver") as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"


async def test_no_origin_follows_the_setting() -> None:
    """No Origin (a non-browser client) passes by default and is refused when ALLOW_NO_ORIGIN is off."""
    async with connect("/ws/echo/") as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"
    with override_settings(TETHER={"ALLOW_NO_ORIGIN": False}), pytest.raises(Rejected) as info:
        async with connect("/ws/echo/"):
            pass
    assert info.value.code == CloseCode.FORBIDDEN


async def test_check_origin_off_lets_any_origin_in() -> None:
    """CHECK_ORIGIN False disables the check (for a proxy that does it)."""
    with override_settings(TETHER={"CHECK_ORIGIN": False}):
        async with connect("/ws/echo/", origin="https://evil.example") as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "pong!"


# -- Cross-Site WebSocket Hijacking on a real server ---------------------------------


@pytest.fixture
def login_cookie(transactional_db: None) -> str:
    """A valid session cookie for user "ann", saved in the test database the server reads."""
    from asgiref.sync import async_to_sync

    user = User.objects.create_user("ann")
    return async_to_sync(session_cookie)(user)


@pytest.fixture(scope="module")
def strict_server(django_db_setup: None) -> Iterator[Server]:
    env = {
        "TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"]),
        "TETHER_TEST_SETTINGS": json.dumps({"ALLOW_NO_ORIGIN": False}),
    }
    with serve("uvicorn-sansio", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def default_server(django_db_setup: None) -> Iterator[Server]:
    with serve("uvicorn", env={"TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"])}) as running:
        yield running


async def test_cswsh_foreign_origin_with_a_valid_cookie_is_refused(default_server: Server, login_cookie: str) -> None:
    """A page on evil.example opening a socket with the victim's cookie gets HTTP 403; the log names it."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{default_server.url}/ws/auth/whoami/",
            origin=websockets.Origin("https://evil.example"),
            additional_headers={"Cookie": login_cookie},
        ):
            pass
    assert info.value.response.status_code == 403
    assert b"4403" in info.value.response.body
    assert "Origin 'https://evil.example' is not allowed" in default_server.log


async def test_cswsh_own_origin_with_the_cookie_sees_the_user(default_server: Server, login_cookie: str) -> None:
    """The same cookie from the site's own page connects, and the socket sees the user."""
    async with websockets.connect(
        f"{default_server.url}/ws/auth/whoami/",
        origin=websockets.Origin(f"http://127.0.0.1:{default_server.port}"),
        additional_headers={"Cookie": login_cookie},
    ) as ws:
        assert json.loads(await ws.recv())["user"] == "ann"


async def test_no_origin_is_allowed_by_default_on_a_real_server(default_server: Server) -> None:
    """A non-browser client (no Origin) connects under the default settings."""
    async with websockets.connect(f"{default_server.url}/ws/echo/") as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong!"


async def test_no_origin_is_refused_when_the_setting_says_so(strict_server: Server) -> None:
    """With ALLOW_NO_ORIGIN off, a client without Origin gets 403; one with an allowed Origin passes."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{strict_server.url}/ws/echo/"):
            pass
    assert info.value.response.status_code == 403
    async with websockets.connect(
        f"{strict_server.url}/ws/echo/", origin=websockets.Origin("http://localhost:1234")
    ) as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong!"


@pytest.mark.parametrize(
    "origins",
    [
        ["http://testserver", "https://evil.example"],  # the allowed one first: checking only it let evil in
        ["https://evil.example", "http://testserver"],
        ["http://testserver", "http://testserver"],
        ["http://testserver, https://evil.example"],  # as a proxy joins repeated headers
    ],
)
async def test_more_than_one_origin_is_refused(origins: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """A handshake with more than one Origin (no browser sends that) is refused with 4403 and logged."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/echo/", headers=[("origin", origin) for origin in origins]):
            pass
    assert (info.value.status, info.value.code) == (403, CloseCode.FORBIDDEN)
    [record] = [r for r in caplog.records if r.name == "tether.security"]
    assert "more than one Origin header" in record.getMessage()
