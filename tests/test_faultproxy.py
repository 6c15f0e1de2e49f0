"""The fault proxy the broker tests rely on: it forwards, and breaks the link exactly as told."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    """A proxy in front of an echo server."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy(port) as proxy:
        yield proxy
    server.close()


async def roundtrip(proxy: FaultProxy, data: bytes = b"ping", timeout: float = 2) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readexactly(len(data)), timeout)
    finally:
        writer.close()


async def test_forwards_and_adds_latency(proxy: FaultProxy) -> None:
    """Bytes go through both ways; latency() delays each chunk both ways."""
    assert await roundtrip(proxy) == b"ping"
    proxy.latency(0.1)
    began = time.monotonic()
    assert await roundtrip(proxy) == b"ping"
    assert time.monotonic() - began >= 0.2
    assert proxy.accepted == 2


async def test_blackhole_accepts_and_never_answers_until_restored(proxy: FaultProxy) -> None:
    """A black-holed proxy accepts the connection but answers nothing; restore() lets it through."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    proxy.blackhole()
    writer.write(b"b")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(1), 0.3)
    with pytest.raises(asyncio.TimeoutError):
        await roundtrip(proxy, timeout=0.3)
    await proxy.restore()
    assert await asyncio.wait_for(reader.readexactly(1), 2) == b"b"
    writer.close()


async def test_cut_resets_open_connections_and_refuse_refuses_new_ones(proxy: FaultProxy) -> None:
    """cut() ends open connections (EOF or reset); refuse() makes connecting fail; restore() listens again."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    proxy.refuse()
    await proxy.cut()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 2)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    await proxy.restore()
    assert await roundtrip(proxy) == b"ping"
