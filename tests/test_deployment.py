"""Deployment as documented in docs/deployment.md, against a real nginx and real uvicorn processes."""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.nginx import Site, docs_site_config, run_nginx, site_config, site_directory, without_upgrade_headers
from tests.servers import Server, serve


@pytest.fixture(scope="module")
def upstream() -> Iterator[Server]:
    """uvicorn (websockets-sansio) serving the test project, as nginx's upstream."""
    with serve("uvicorn-sansio") as server:
        yield server


@pytest.fixture
def site() -> Iterator[Site]:
    with site_directory() as made:
        yield made


def trusting(site: Site) -> ssl.SSLContext:
    """A client TLS context that trusts the site's self-signed certificate."""
    return ssl.create_default_context(cafile=str(site.certificate))


def test_docs_config_is_the_one_tested() -> None:
    """The deployment guide holds the config the tests run, with the upgrade lines in it."""
    config = docs_site_config()
    assert "proxy_http_version 1.1;" in config
    assert "proxy_set_header Upgrade $http_upgrade;" in config
    assert "proxy_set_header Connection $connection_upgrade;" in config
    assert "X-Forwarded-Proto $scheme" in config


async def test_nginx_passes_websockets_over_tls(upstream: Server, site: Site) -> None:
    """Through the documented nginx config a wss:// client talks to the handler, TLS ending at nginx."""
    with run_nginx(site, site_config(site, upstream.port)) as nginx:
        async with websockets.connect(
            f"{nginx.wss_url}/ws/echo/", ssl=trusting(site), origin=websockets.Origin(nginx.https_url)
        ) as ws:
            for text in ("ping", "hello", "x" * 100_000):
                await ws.send(text)
                assert await ws.recv() == ("pong!" if text == "ping" else text)


async def test_nginx_without_upgrade_headers_gives_426_hint(upstream: Server, site: Site) -> None:
    """With the Upgrade/Connection lines removed, the client sees tether's 426 and the nginx hint."""
    config = without_upgrade_headers(site_config(site, upstream.port))
    assert "Upgrade" not in config.split("location / {")[1]
    with run_nginx(site, config) as nginx:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"{nginx.wss_url}/ws/echo/", ssl=trusting(site)):
                pass
    response = info.value.response
    assert response.status_code == 426
    assert b"proxy_set_header Upgrade $http_upgrade;" in response.body
    assert '"GET /ws/echo/ HTTP/1.1" 426' in upstream.log  # it reached Django as a plain GET


def test_nginx_redirects_http_and_serves_static(upstream: Server, site: Site) -> None:
    """Port 80 redirects to https; /static/ comes from the collected directory, not from Django."""
    (site.static_root / "hello.txt").write_text("static hello")
    with run_nginx(site, site_config(site, upstream.port)) as nginx:
        plain = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=5)
        plain.request("GET", "/rooms/lobby/")
        redirect = plain.getresponse()
        assert redirect.status == 301
        assert redirect.getheader("Location") == f"{nginx.https_url}/rooms/lobby/"
        plain.close()
        with urllib.request.urlopen(f"{nginx.https_url}/static/hello.txt", context=trusting(site), timeout=5) as got:
            assert got.read() == b"static hello"
