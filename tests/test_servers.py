"""End to end on real ASGI servers with the `websockets` client: every server tether supports."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import SERVERS, Server, serve

pytestmark = pytest.mark.django_db(transaction=True)  # the server processes share the test database file


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request: pytest.FixtureRequest, django_db_setup: None, django_db_blocker: object) -> Iterator[Server]:
    with serve(request.param) as running:
        yield running


async def test_ping_pong(server: Server) -> None:
    """The tutorial's ping/pong over a real server."""
    async with websockets.connect(f"{server.url}/ws/echo/") as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong!"
        await ws.send("hello")
        assert await ws.recv() == "hello"


async def test_json_round_trip(server: Server) -> None:
    """A JSON message comes back decoded and re-encoded by the handler."""
    async with websockets.connect(f"{server.url}/ws/json/") as ws:
        await ws.send('{"n": [1, 2], "s": "ü"}')
        assert await ws.recv() == '{"echo":{"n":[1,2],"s":"ü"}}'


async def test_binary_round_trip(server: Server) -> None:
    """Binary frames stay binary, byte for byte."""
    payload = bytes(range(256))
    async with websockets.connect(f"{server.url}/ws/bytes/") as ws:
        await ws.send(payload)
        assert await ws.recv() == payload[::-1]


async def test_unknown_path_is_rejected_with_403(server: Server) -> None:
    """A path with no websocket route fails the handshake with HTTP 403."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{server.url}/ws/missing/"):
            pass
    assert info.value.response.status_code == 403


async def test_handler_exception_closes_1011_and_server_keeps_serving(server: Server) -> None:
    """A crashing handler closes its socket with 1011; another client on the server is still served."""
    async with (
        websockets.connect(f"{server.url}/ws/boom/") as bad,
        websockets.connect(f"{server.url}/ws/echo/") as good,
    ):
        await bad.send("now")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(bad.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        await good.send("ping")
        assert await good.recv() == "pong!"
    assert "RuntimeError: boom: now" in server.log


def test_http_request_to_websocket_route_answers_426(server: Server) -> None:
    """A plain GET on a websocket route answers 426 with the proxy hint."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.http_url}/ws/echo/", timeout=5)
    assert info.value.code == 426
    assert b"Upgrade" in info.value.read()


@pytest.mark.parametrize(("kind", "code"), [("uvicorn-sansio", 1012), ("uvicorn-wsproto", 1012)])
async def test_shutdown_tells_clients_to_reconnect(kind: str, code: int, django_db_setup: None) -> None:
    """On SIGTERM uvicorn closes open sockets with 1012 itself, before the app's lifespan shutdown.

    tether's own 1001 (lifespan shutdown, or a server cancelling the handler) is tested in-process;
    daphne and granian drop the TCP connection without a close frame, and hypercorn's behaviour
    depends on the Python version: none of that is tether's to change.
    """
    with serve(kind) as running:
        async with websockets.connect(f"{running.url}/ws/echo/") as ws:
            await ws.send("ping")
            assert await ws.recv() == "pong!"
            stopper = asyncio.get_running_loop().run_in_executor(None, running.stop)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            await stopper
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == code
