"""tether.testing's live server: uvicorn in the test process, for real clients and browsers.

Sync tests on purpose: the server has its own loop in its own thread, and Playwright's sync API
can't run inside an asyncio loop.
"""

from __future__ import annotations

import asyncio
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import websockets
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path
from playwright.sync_api import expect, sync_playwright

from tests.conftest import require_program
from tests.test_chat_browser import CHROMIUM, CHROMIUM_ARGS
from tether import WebSocket, broadcast_sync
from tether.testing import TetherLiveServerTestCase, live_server
from tether.urls import websocket

PAGE = """<!doctype html><title>live</title><p id="state">loading</p><p id="reply"></p>
<script>
  const ws = new WebSocket(`ws://${location.host}/ws/live/${encodeURIComponent("hello world")}/`);
  ws.onopen = () => { document.getElementById("state").textContent = "open"; ws.send("ping"); };
  ws.onmessage = (event) => { document.getElementById("reply").textContent += event.data + ";"; };
</script>"""


async def live(socket: WebSocket) -> None:
    """Joins the room from the URL, answers pings with the room and the user count (ORM), then relays."""
    await socket.accept()
    room = socket.kwargs["room"]
    await socket.join(f"live.{room}")
    async for text in socket.iter_text():
        users = await User.objects.acount()
        await socket.send_text(f"pong {room} users={users}" if text == "ping" else text)


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


urlpatterns = [path("page/", page), websocket("ws/live/<str:room>/", live)]


async def ping(url: str) -> str:
    async with websockets.connect(url) as ws:
        await ws.send("ping")
        return str(await ws.recv())


@override_settings(ROOT_URLCONF=__name__)
class LiveServerTests(TetherLiveServerTestCase):
    """The test case serves HTTP and WebSockets, with the test database, to clients outside the process's loop."""

    def setUp(self) -> None:
        User.objects.create(username="ada")

    def test_http_and_websocket_with_the_test_database(self) -> None:
        """A plain HTTP GET and a websockets-client round trip; the handler sees the test's user row."""
        with urllib.request.urlopen(f"{self.live_server_url}/page/", timeout=5) as response:
            assert response.status == 200 and b"new WebSocket" in response.read()
        reply = asyncio.run(ping(f"{self.live_server_ws_url}/ws/live/hello%20world/"))
        assert reply == "pong hello world users=1"

    def test_broadcast_sync_from_the_test_reaches_the_live_socket(self) -> None:
        """broadcast_sync() in the test goes through the live server's hub to its socket, in order."""

        async def scenario() -> list[str]:
            async with websockets.connect(f"{self.live_server_ws_url}/ws/live/café/") as ws:
                await ws.send("ping")
                first = str(await ws.recv())  # joined by now: the handler joins before answering
                await asyncio.to_thread(broadcast_sync, "live.café", "from the test")
                return [first, str(await ws.recv())]

        assert asyncio.run(scenario()) == ["pong café users=1", "from the test"]

    def test_chromium_opens_the_socket(self) -> None:
        """A real browser loads the page from the live server and talks to the websocket route."""
        require_program(CHROMIUM, "apt-get install -y chromium")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{self.live_server_url}/page/")
                expect(page.locator("#state")).to_have_text("open", timeout=15_000)
                expect(page.locator("#reply")).to_have_text("pong hello world users=1;", timeout=15_000)
                with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps a loop running on this thread
                    pool.submit(broadcast_sync, "live.hello world", "to the browser").result()
                expect(page.locator("#reply")).to_have_text("pong hello world users=1;to the browser;", timeout=15_000)
            finally:
                browser.close()


@pytest.mark.django_db(transaction=True)
def test_live_server_context_manager_for_pytest(settings: Any) -> None:
    """live_server() serves for a with-block and stops after it (the port no longer answers)."""
    settings.ROOT_URLCONF = __name__
    with live_server() as server:
        assert asyncio.run(ping(f"{server.ws_url}/ws/live/lobby/")) == "pong lobby users=0"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/page/", timeout=5)


@pytest.mark.django_db(transaction=True)
def test_live_server_allows_its_own_host(settings: Any) -> None:
    """Like Django's LiveServerTestCase, the server's host is allowed: Host header and Origin check pass."""
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["testserver"]

    async def from_its_page(server: Any) -> str:
        async with websockets.connect(f"{server.ws_url}/ws/live/lobby/", origin=server.url) as ws:
            await ws.send("ping")
            return str(await ws.recv())

    with live_server() as server:
        with urllib.request.urlopen(f"{server.url}/page/", timeout=5) as response:
            assert response.status == 200
        assert asyncio.run(from_its_page(server)) == "pong lobby users=0"
    from django.conf import settings as current

    assert current.ALLOWED_HOSTS == ["testserver"]  # given back after the server stops
