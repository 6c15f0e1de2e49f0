"""tether.client (the Python client of tether.v1) against a real uvicorn."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.servers import ROOT, Server, serve
from tether.client import CommandError, connect


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve("uvicorn-sansio") as server:
        yield server


def group(prefix: str = "public") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def test_subscribe_publish_and_receive(server: Server) -> None:
    """Two clients: one publishes to two groups, the other receives each as a Message, in order."""
    a, b = group(), group()
    async with connect(f"{server.url}/ws/realtime/") as listener, connect(f"{server.url}/ws/realtime/") as sender:
        first = await listener.subscribe(a)
        second = await listener.subscribe(b)
        assert not first.recovered and first.result["group"] == a  # nothing asked, so nothing recovered
        for n in range(3):
            await sender.publish(a, {"n": n})
        await sender.publish(b, "text")
        assert [(await first.get(5)).data for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
        message = await second.get(5)
        assert (message.group, message.data) == (b, "text")
        await listener.ping()


async def test_errors_and_the_server_ending_a_subscription(server: Server) -> None:
    """A refused command raises CommandError with its code; an unsubscribed push ends the iterator."""
    room = group("room")
    async with connect(f"{server.url}/ws/realtime/") as client:
        with pytest.raises(CommandError) as refused:
            await client.subscribe("secret.x")
        assert refused.value.code == "forbidden"
        with pytest.raises(CommandError) as refused:
            await client.call("fly")
        assert refused.value.code == "unknown_command"
        subscription = await client.subscribe(room)
        with pytest.raises(CommandError):
            await client.publish("public.kick", {"group": room})
        assert [m async for m in subscription] == []
        assert subscription.ended == "kicked"


async def test_a_closed_connection_fails_pending_commands(server: Server) -> None:
    """The private endpoint closes an anonymous client with 4401: iterators end, commands raise disconnected."""
    async with connect(f"{server.url}/ws/realtime/private/") as client:
        with pytest.raises(CommandError) as failed:
            await client.ping()
        assert failed.value.code == "disconnected"
        assert client.close_code == 4401


def test_the_core_does_not_import_websockets() -> None:
    """import tether and tether.client: websockets is imported only when connect() is called."""
    code = "import sys, tether, tether.client; assert 'websockets' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
