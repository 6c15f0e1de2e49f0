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
from tether.security import handshake_origin, origin_allowed
from tether.testing import Rejected, connect, session_cookie


def _scope(host: str | None, scheme: str = "ws", **headers: str) -> dict[str, object]:
    pairs = [(b"host", host.encode())] if host is not None else []
    pairs += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": pairs, "server": ("10.0.0.1", 8000)}


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "allowed"),
    [
        ("http://testserver", "ws", "testserver", True),  # the handshake's own origin
        ("HTTP://TESTSERVER", "ws", "testserver", True),
        ("http://testserver:8000", "ws", "testserver:8000", True),
        ("http://testserver", "ws", "testserver:8000", False),  # the port counts, as in Django's CSRF check
        ("https://testserver:8443", "ws", "testserver", False),
        ("http://sub.example.com", "ws", "sub.example.com", True),  # ".example.com" in ALLOWED_HOSTS
        ("http://sub.example.com", "ws", "testserver", False),  # ALLOWED_HOSTS alone trusts no other origin
        ("http://evil-example.com", "ws", "evil-example.com", False),  # its host is not in ALLOWED_HOSTS
        ("http://testserver", "wss", "testserver", False),  # over TLS the own origin is https
        ("https://testserver", "wss", "testserver", True),
        ("null", "ws", "testserver", False),  # sandboxed iframes and file: pages
        ("", "ws", "testserver", False),
        ("http://testserver:notaport", "ws", "testserver", False),
        ("ftp://testserver", "ws", "testserver", False),
        ("https://app.trusted.example", "ws", "testserver", True),  # CSRF_TRUSTED_ORIGINS wildcard
        ("http://app.trusted.example", "ws", "testserver", False),  # ... for its scheme only
        ("https://exact.example:8443", "ws", "testserver", True),  # CSRF_TRUSTED_ORIGINS exact
        ("https://exact.example", "ws", "testserver", False),  # ... port included
        ("https://partner.example", "wss", None, True),  # TETHER["ALLOWED_ORIGINS"], with no Host at all
    ],
)
def test_origin_matching_follows_djangos_csrf_rules(origin: str, scheme: str, host: str | None, allowed: bool) -> None:
    """The handshake's own scheme://host[:port] (host in ALLOWED_HOSTS), CSRF_TRUSTED_ORIGINS (exact
    and *.) and TETHER ALLOWED_ORIGINS decide; nothing else."""
    with override_settings(
        ALLOWED_HOSTS=["testserver", ".example.com"],
        CSRF_TRUSTED_ORIGINS=["https://*.trusted.example", "https://exact.example:8443"],
        TETHER={"ALLOWED_ORIGINS": ["https://partner.example"]},
    ):
        assert origin_allowed(origin, handshake_origin(_scope(host, scheme))) is allowed


def test_debug_with_empty_allowed_hosts_allows_the_local_own_origin() -> None:
    """With DEBUG and no ALLOWED_HOSTS, a local page's own origin passes, as Django's host check lets it."""
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert handshake_origin(_scope("localhost:3000")) == "http://localhost:3000"
        assert origin_allowed("http://localhost:3000", handshake_origin(_scope("localhost:3000")))
        assert not origin_allowed("https://evil.example", handshake_origin(_scope("localhost:3000")))


def test_behind_a_proxy_the_own_origin_follows_djangos_proxy_settings() -> None:
    """SECURE_PROXY_SSL_HEADER makes the own origin https; USE_X_FORWARDED_HOST takes the proxy's host."""
    scope = _scope("127.0.0.1:8000", x_forwarded_proto="https", x_forwarded_host="chat.example.com")
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert handshake_origin(scope) == "http://127.0.0.1:8000"
    with override_settings(
        ALLOWED_HOSTS=["*"], SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"), USE_X_FORWARDED_HOST=True
    ):
        assert handshake_origin(scope) == "https://chat.example.com"
        assert origin_allowed("https://chat.example.com", handshake_origin(scope))
        assert not origin_allowed("http://chat.example.com", handshake_origin(scope))


def test_the_check_follows_each_settings_change() -> None:
    """The settings the check reads are read once, then again after any of them changes (setting_changed):
    a host or origin allowed a moment ago is refused once the setting no longer lists it, and back."""
    scope = _scope("chat.example.com")
    for hosts, own in ((["chat.example.com"], "http://chat.example.com"), (["other.example"], None)) * 2:
        with override_settings(ALLOWED_HOSTS=hosts):
            assert handshake_origin(scope) == handshake_origin(scope) == own
    for trusted, allowed in ((["https://*.partner.example"], True), ([], False)) * 2:
        with override_settings(CSRF_TRUSTED_ORIGINS=trusted):
            assert origin_allowed("https://app.partner.example") is allowed
        with override_settings(TETHER={"ALLOWED_ORIGINS": trusted}):
            assert origin_allowed("https://app.partner.example") is allowed
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert handshake_origin(scope) == "http://chat.example.com"
        with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
            assert handshake_origin(_scope("chat.example.com", x_forwarded_proto="https")) == "https://chat.example.com"
        assert handshake_origin(_scope("chat.example.com", x_forwarded_proto="https")) == "http://chat.example.com"


async def test_allowed_hosts_star_does_not_let_a_foreign_origin_in(transactional_db: None) -> None:
    """ALLOWED_HOSTS = ["*"]: evil.example with a valid session cookie is refused; the site's own origin
    and a CSRF_TRUSTED_ORIGINS entry connect."""
    ann = await User.objects.acreate_user("ann")
    with override_settings(ALLOWED_HOSTS=["*"], CSRF_TRUSTED_ORIGINS=["https://app.example.com"]):
        with pytest.raises(Rejected) as info:
            async with connect("/ws/auth/whoami/", user=ann, origin="https://evil.example"):
                pass
        assert info.value.code == CloseCode.FORBIDDEN
        for origin in ("http://testserver", "https://app.example.com"):
            async with connect("/ws/auth/whoami/", user=ann, origin=origin) as ws:
                assert (await ws.receive_json())["user"] == "ann"


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
        f"{strict_server.url}/ws/echo/", origin=websockets.Origin(f"http://127.0.0.1:{strict_server.port}")
    ) as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong!"


@pytest.fixture(scope="module")
def star_server(django_db_setup: None) -> Iterator[Server]:
    """ALLOWED_HOSTS = ["*"], as behind many proxies, and one trusted front-end origin."""
    env = {
        "TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"]),
        "TETHER_TEST_ALLOWED_HOSTS": json.dumps(["*"]),
        "TETHER_TEST_CSRF_TRUSTED_ORIGINS": json.dumps(["https://app.example.com"]),
    }
    with serve("uvicorn-sansio", env=env) as running:
        yield running


async def test_allowed_hosts_star_on_a_real_server_refuses_a_foreign_origin(
    star_server: Server, login_cookie: str
) -> None:
    """With ALLOWED_HOSTS = ["*"], evil.example carrying a valid session cookie gets HTTP 403; the
    site's own origin and the CSRF_TRUSTED_ORIGINS entry connect and see the user."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{star_server.url}/ws/auth/whoami/",
            origin=websockets.Origin("https://evil.example"),
            additional_headers={"Cookie": login_cookie},
        ):
            pass
    assert info.value.response.status_code == 403 and b"4403" in info.value.response.body
    assert "Origin 'https://evil.example' is not allowed" in star_server.log
    for origin in (f"http://127.0.0.1:{star_server.port}", "https://app.example.com"):
        async with websockets.connect(
            f"{star_server.url}/ws/auth/whoami/",
            origin=websockets.Origin(origin),
            additional_headers={"Cookie": login_cookie},
        ) as ws:
            assert json.loads(await ws.recv())["user"] == "ann"


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
