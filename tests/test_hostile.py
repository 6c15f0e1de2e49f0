"""Hostile and broken clients against a real uvicorn: bounded closes, bounded memory, strict JSON, one Origin.

Every test runs a real server process (``tests.servers.serve``) with
``tests.hostile_app`` as tether's URLconf, and attacks it over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from django.test import override_settings
from websockets.asyncio.client import ClientConnection

from tests.servers import Server, serve
from tests.serving import manage_serve, memory_kib
from tether import server as server_module
from tether.management.commands.serve import Command
from tether.server import asgi_application_path
from tether.websocket import CLOSE_TIMEOUT

GRACEFUL = 5  # --timeout-graceful-shutdown of the servers below


def hostile_env(**tether: Any) -> dict[str, str]:
    return {"TETHER_TEST_SETTINGS": json.dumps({"URLCONF": "tests.hostile_app", **tether})}


def raw_handshake(
    port: int, path: str, headers: tuple[tuple[str, str], ...] = (), rcvbuf: int = 4096
) -> tuple[socket.socket, bytes]:
    """A WebSocket handshake by hand on a socket with a tiny receive buffer; returns it and the response head."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect(): sets the TCP window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    return sock, response


async def command(control: ClientConnection, **data: Any) -> dict[str, Any]:
    await control.send(json.dumps(data))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(control.recv(), 60))
    return reply


async def wait_stats(control: ClientConnection, done: Any, timeout: float) -> dict[str, Any]:
    """Poll the server's stats (bounded) until ``done(stats)``; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await command(control, stats=True)
        if done(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)  # poll interval of a bounded poll


async def wait_log(server: Server, text: str, timeout: float) -> str:
    """Poll the server's log (bounded) until it holds ``text``; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log
        if text in log or time.monotonic() > deadline:
            return log
        await asyncio.sleep(0.05)  # poll interval of a bounded poll


# -- 1. OVERFLOW="close" with a client that stops reading ----------------------------


@contextlib.contextmanager
def hostile_server(kind: str = "uvicorn-sansio", **tether: Any) -> Iterator[Server]:
    with serve(kind, env=hostile_env(**tether), extra_args=["--timeout-graceful-shutdown", str(GRACEFUL)]) as server:
        yield server


@pytest.fixture(params=["uvicorn-sansio", "uvicorn", "uvicorn-wsproto"])
def overflow_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with hostile_server(request.param, QUEUE_SIZE=50) as server:
        yield server


@pytest.fixture
def deep_queue_server() -> Iterator[Server]:
    with hostile_server(QUEUE_SIZE=1000) as server:
        yield server


async def overflow_victim(server: Server, group: str) -> tuple[socket.socket, float]:
    """A victim that never reads, overflowed by broadcasts; returns its socket and when the flood began."""
    victim, response = raw_handshake(server.port, f"/ws/victim/{group}/")
    assert response.startswith(b"HTTP/1.1 101"), response
    return victim, time.time()


async def test_overflow_releases_a_client_that_stops_reading(overflow_server: Server) -> None:
    """A client that never reads is overflowed: at once its handler ends with Disconnected(1013) and its
    membership and queue are gone; within CLOSE_TIMEOUT tether gives up the close frame and says so;
    no task exception is left unretrieved.
    """
    async with websockets.connect(f"{overflow_server.url}/ws/control/") as control:
        victim, _ = await overflow_victim(overflow_server, "slow")
        with victim:
            joined = await wait_stats(control, lambda s: "slow" in s["live"] and s["hub"]["members"] >= 1, 10)
            assert joined["hub"]["groups"] == 1, joined
            flood_began = time.time()
            await command(control, broadcast="slow", count=2000, size=16384)  # 32 MB to a client reading nothing
            stats = await wait_stats(control, lambda s: s["ended"], 10)
            [ended] = stats["ended"]
            assert ended["disconnected"] == 1013
            assert stats["live"] == [] and stats["hub"]["members"] == 0 and stats["hub"]["groups"] == 0
            assert stats["hub"]["dropped_messages"] > 0
            released = ended["ended_at"] - flood_began
            gave_up = "Gave up sending close 1013 to websocket /ws/victim/slow/"
            log = await wait_log(overflow_server, gave_up, CLOSE_TIMEOUT + 5)
            assert gave_up in log, log
            assert "Closing websocket /ws/victim/slow/ with 1013" in log
            # a sentinel after the give-up: the server still serves, and nothing was left unretrieved
            assert (await command(control, stats=True))["hub"]["tasks"] == 0
            stopped_at = time.monotonic()
            code = overflow_server.stop(timeout=GRACEFUL + 10)
            took = time.monotonic() - stopped_at
    log = overflow_server.log
    assert "Task exception was never retrieved" not in log, log
    assert "Traceback" not in log, log
    assert code in (0, -signal.SIGTERM), log  # uvicorn >= 0.30 re-raises the signal once shut down
    assert took < GRACEFUL + 1, f"SIGTERM took {took:.1f}s with --timeout-graceful-shutdown {GRACEFUL}\n{log}"
    print(f"handler released {released:.2f}s after the flood began; SIGTERM exit took {took:.2f}s")


async def test_sigterm_with_a_non_reading_client_exits_within_the_graceful_timeout(deep_queue_server: Server) -> None:
    """SIGTERM while a client that stopped reading is still connected, every buffer full and its queue
    half full, exits within --timeout-graceful-shutdown (plus lifespan), without a task exception.
    """
    server = deep_queue_server
    async with websockets.connect(f"{server.url}/ws/control/") as control:
        victim, _ = await overflow_victim(server, "stuck")
        with victim:
            await wait_stats(control, lambda s: "stuck" in s["live"], 10)
            await command(control, broadcast="stuck", count=600, size=16384)  # 9.6 MB: more than the buffers hold
            stats = await command(control, stats=True)
            assert stats["live"] == ["stuck"] and stats["hub"]["members"] == 1  # still connected, not overflowed
            stopped_at = time.monotonic()
            code = server.stop(timeout=GRACEFUL + 20)
            took = time.monotonic() - stopped_at
    log = server.log
    assert "Task exception was never retrieved" not in log, log
    assert took < GRACEFUL + 1, f"SIGTERM took {took:.1f}s with --timeout-graceful-shutdown {GRACEFUL}\n{log}"
    print(f"SIGTERM exit took {took:.2f}s; exit code {code}")


# -- 3, 4, 5: nested JSON, NaN, two Origin headers ------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with hostile_server() as running:
        yield running


async def test_deeply_nested_json_closes_1007_with_a_warning(server: Server) -> None:
    """JSON nested 32,000 deep (64 KB, under MAX_MESSAGE_SIZE) closes with 1007 and a WARNING, not 1011."""
    async with websockets.connect(f"{server.url}/ws/json/") as ws:
        await ws.send("[" * 32000 + "]" * 32000)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1007, ws.close_reason
    assert "nested too deeply" in (ws.close_reason or "")
    async with websockets.connect(f"{server.url}/ws/json/") as ws:  # a sentinel: the log line is written by now
        await ws.send("[1]")
        assert json.loads(await ws.recv()) == {"echo": [1]}
    log = server.log
    assert "Closing websocket /ws/json/ with 1007: malformed JSON: nested too deeply" in log
    assert "RecursionError" not in log and "Traceback" not in log


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"invalid JSON on the wire: {constant}")

    return json.loads(text, parse_constant=refuse)


async def test_send_json_refuses_nan_and_infinity(server: Server) -> None:
    """send_json() raises ValueError naming the problem for NaN and Infinity; only valid JSON goes out."""
    async with websockets.connect(f"{server.url}/ws/nan/") as ws:
        frames = [strict_json(str(await asyncio.wait_for(ws.recv(), 10))) for _ in range(3)]
    assert [list(frame) for frame in frames] == [["refused"], ["refused"], ["sentinel"]]
    assert "can't send NaN or Infinity as JSON" in frames[0]["refused"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("uvicorn", 403),  # tether refuses
        ("uvicorn-sansio", 400),  # the websockets library refuses first: "invalid Origin header: multiple values"
        ("uvicorn-wsproto", 403),  # tether refuses (tether alone used to check the first one: accepted)
    ],
)
def test_two_origin_headers_are_refused(kind: str, status: int) -> None:
    """A handshake with two Origin headers (an allowed one first) is refused on every uvicorn implementation."""
    with serve(kind, env=hostile_env()) as running:
        origins = (("Origin", f"http://127.0.0.1:{running.port}"), ("Origin", "https://evil.example"))
        sock, response = raw_handshake(running.port, "/ws/echo/", origins)
        sock.close()
        assert response.startswith(b"HTTP/1.1 %d" % status), response
        sock, response = raw_handshake(running.port, "/ws/echo/", origins[:1])  # the allowed one alone passes
        sock.close()
        assert response.startswith(b"HTTP/1.1 101"), response
        assert ("more than one Origin header" in running.log) is (status == 403), running.log


# -- 2. manage.py serve: the server's limits are tether's ------------------------------


CHUNK = 64 * 1024


async def send_fragmented(port: int, total: int) -> str:
    """Open a socket and send one binary message of ``total`` bytes in 64 KiB fragments; how it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /ws/bytes/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head

    async def read_close() -> str:
        received = b""
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                received += chunk
        # the server sends nothing but its close frame here: 0x88, length, then the code
        return f"closed {int.from_bytes(received[2:4], 'big')}" if received[:1] == b"\x88" else "cut"

    closing = asyncio.ensure_future(read_close())
    payload = bytes(CHUNK)
    sent = 0
    with contextlib.suppress(ConnectionError, OSError):
        while sent < total and not closing.done():
            last = sent + CHUNK >= total
            opcode = 0x2 if sent == 0 else 0x0
            # FIN on the last fragment; masked with the all-zero key, so the payload goes as it is
            header = bytes([(0x80 if last else 0) | opcode, 0x80 | 127]) + CHUNK.to_bytes(8, "big") + bytes(4)
            writer.write(header + payload)
            await writer.drain()
            sent += CHUNK
    try:
        return await asyncio.wait_for(closing, 30)
    finally:
        writer.close()


async def rss_growth(server: Server, clients: int = 20, size: int = 16 * 1024 * 1024) -> tuple[float, list[str]]:
    """Peak RSS growth (MiB) of ``server`` while ``clients`` send a ``size`` fragmented message at once."""
    async with websockets.connect(f"{server.url}/ws/echo/") as ws:  # warm: the first connection loads the code
        await ws.send("ping")
        assert await ws.recv() == "pong!"
    before = memory_kib(server.process.pid)
    endings = await asyncio.gather(*(send_fragmented(server.port, size) for _ in range(clients)))
    after = memory_kib(server.process.pid)
    return (after["VmHWM"] - before["VmRSS"]) / 1024, endings


async def test_serve_bounds_the_memory_of_oversized_fragmented_messages() -> None:
    """Under manage.py serve, 20 clients each sending a 16 MiB fragmented message grow the server's
    peak RSS by less than 20 MiB: the server itself stops each at MAX_MESSAGE_SIZE (1 MiB) with 1009.
    """
    with manage_serve() as server:
        growth, endings = await rss_growth(server)
    assert "Serving tests.asgi:application" in server.log and "max message 1048576 bytes" in server.log
    assert "tether.W02" not in server.log  # serve's limits are tether's: no server-limit warning
    assert set(endings) <= {"closed 1009", "cut"} and "closed 1009" in endings, endings
    assert growth < 20, f"peak RSS grew {growth:.1f} MiB"
    print(f"manage.py serve: peak RSS +{growth:.1f} MiB for 20 x 16 MiB; {endings.count('closed 1009')} saw 1009")


async def test_plain_uvicorn_buffers_oversized_messages_the_control() -> None:
    """The control for the test above: plain uvicorn (--ws-max-size 16 MiB) holds the same attack in memory."""
    with serve("uvicorn-sansio") as server:
        growth, endings = await rss_growth(server)
    assert growth > 60, f"peak RSS grew only {growth:.1f} MiB: the measurement can't tell"
    assert "(tether.W020) The server reads messages of up to 16777216 bytes" in server.log  # logged at startup
    print(f"plain uvicorn-sansio: peak RSS +{growth:.1f} MiB for 20 x 16 MiB; endings {set(endings)}")


async def test_serve_flags_override_the_settings() -> None:
    """Each of serve's limits comes from TETHER and a flag overrides it: a 2,000-byte message under
    --ws-max-size 1000 is refused by the server with 1009; pings and shutdown follow the flags.
    """
    settings = json.dumps({"PING_INTERVAL": 7, "SHUTDOWN_TIMEOUT": 3})
    with manage_serve("--ws-max-size", "1000", env={"TETHER_TEST_SETTINGS": settings}) as server:
        async with websockets.connect(f"{server.url}/ws/echo/", max_size=None) as ws:
            await ws.send("x" * 999)
            assert await ws.recv() == "x" * 999
            await ws.send("x" * 2000)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1009
    assert "max message 1000 bytes, pings every 7s, graceful shutdown 3s" in server.log, server.log


# -- 6. what a client sees when the server shuts down --------------------------------

SHUTDOWN_CODES = {
    "uvicorn": 1012,  # uvicorn closes every socket itself (service restart) before the lifespan shutdown
    "uvicorn-sansio": 1012,
    "uvicorn-wsproto": 1012,
    "hypercorn": 1001,  # hypercorn runs the lifespan shutdown first: tether closes with 1001 (going away)
    "daphne": 1006,  # daphne has no lifespan and drops the connections: no close frame
    "granian": 1006,  # granian drops the connections too
}
# On Python >= 3.12.1 hypercorn's shutdown awaits asyncio's Server.wait_closed(), which now waits for
# every open connection (pgjones/hypercorn#308): it never reaches the lifespan shutdown while a socket is
# open, so tether is never told, and the socket stays served until the client leaves.
HYPERCORN_WAITS_FOR_CLIENTS = sys.version_info >= (3, 12, 1)


@pytest.mark.parametrize("kind", list(SHUTDOWN_CODES))
async def test_shutdown_close_code_per_server(kind: str) -> None:
    """SIGTERM with a socket open: the close code the client gets depends on the server (the README's table)."""
    with serve(kind) as server:
        async with websockets.connect(f"{server.url}/ws/echo/") as ws:
            await ws.send("ping")
            assert await ws.recv() == "pong!"  # open and served
            server.process.send_signal(signal.SIGTERM)
            if kind == "hypercorn" and HYPERCORN_WAITS_FOR_CLIENTS:
                await asyncio.sleep(GRACEFUL)  # past hypercorn's graceful timeout (3 s)
                await ws.send("ping")  # the sentinel: still served, nobody closed it
                assert await asyncio.wait_for(ws.recv(), 30) == "pong!"
                assert server.process.poll() is None
                await ws.close()
                assert server.process.wait(30) == 0, server.log  # the client left: hypercorn exits
                return
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
        code = ws.close_code if ws.close_code is not None else 1006
        server.stop()
    assert code == SHUTDOWN_CODES[kind], f"{kind} closed with {code}\n{server.log}"


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto", "websockets"])
def test_pings_from_a_client_that_never_reads_stay_bounded(ws: str) -> None:
    """A client that floods pings and never reads the pongs for 5 s grows serve's RSS by under 20 MiB,
    on every implementation: the server stops reading from it while its writes to it are paused.
    """
    with manage_serve("--ws", ws) as server:
        before = memory_kib(server.process.pid)
        sock, response = raw_handshake(server.port, "/ws/echo/")
        assert response.startswith(b"HTTP/1.1 101"), response
        ping = bytes([0x89, 0x80 | 125]) + bytes(4) + bytes(125)  # masked with the zero key
        burst = ping * 500
        pending = memoryview(burst)
        sent = 0
        sock.setblocking(False)
        with sock:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if not pending:
                    pending = memoryview(burst)
                try:
                    n = sock.send(pending)  # whole frames only: a partial send is finished before the next
                except BlockingIOError:
                    select.select([], [sock], [], 0.05)  # wait until the server reads again (it shouldn't)
                    continue
                pending = pending[n:]
                sent += n
            log = server.log
        after = memory_kib(server.process.pid)
    assert "closed with" not in log, log  # no protocol error: the flood was well-formed
    growth = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert sent > 1024 * 1024, sent  # the flood did reach the server
    assert growth < 20, f"peak RSS grew {growth:.1f} MiB for {sent / 2**20:.1f} MiB of pings"
    print(f"ping flood ({ws}): {sent / 2**20:.1f} MiB of pings sent in 5 s, peak RSS +{growth:.1f} MiB")


def test_runserver_passes_the_same_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """runserver starts uvicorn with serve's limits from TETHER (message size, pings, graceful shutdown)."""
    import uvicorn
    from django.core.management import call_command

    from tether.management.commands import runserver

    configs: list[Any] = []
    monkeypatch.setattr(server_module, "_announced", None)  # runserver announces its options: undone after
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    monkeypatch.setattr(runserver.Command, "check_migrations", lambda self: None)
    with override_settings(TETHER={"MAX_MESSAGE_SIZE": 4096, "PING_INTERVAL": 7, "SHUTDOWN_TIMEOUT": 3}):
        call_command("runserver", "127.0.0.1:0", use_reloader=False, skip_checks=True)
    [config] = configs
    assert (config.ws, config.ws_max_size, config.ws_ping_interval) == ("websockets-sansio", 4096, 7)
    assert (config.ws_ping_timeout, config.timeout_graceful_shutdown) == (20.0, 3)


def test_serve_flags_map_to_uvicorns_options() -> None:
    """Every serve flag reaches uvicorn: a Unix socket replaces host and port, 'none' turns pings off."""
    command = Command()
    parser = command.create_parser("manage.py", "serve")
    defaults = command.server_options(vars(parser.parse_args([])))
    assert defaults == {
        "ws": "tether.management.backpressure:WebSocketsSansIOProtocol", "ws_max_size": 1048576, "ws_ping_interval": 20.0, "ws_ping_timeout": 20.0,
        "timeout_graceful_shutdown": 10, "workers": 1, "proxy_headers": True, "forwarded_allow_ips": None,
        "lifespan": "on", "log_level": "info", "host": "127.0.0.1", "port": 8000,
    }  # fmt: skip
    args = ["--uds", "/run/x.sock", "--workers", "4", "--no-proxy-headers", "--ws-ping-interval", "none",
            "--ws", "wsproto", "--forwarded-allow-ips", "10.0.0.1", "--timeout-graceful-shutdown", "2.5"]  # fmt: skip
    options = command.server_options(vars(parser.parse_args(args)))
    assert "host" not in options and options["uds"] == "/run/x.sock"
    assert (options["workers"], options["proxy_headers"], options["ws_ping_interval"]) == (4, False, None)
    assert (options["ws"], options["forwarded_allow_ips"], options["timeout_graceful_shutdown"]) == (
        "tether.management.backpressure:WSProtocol", "10.0.0.1", 2.5,
    )  # fmt: skip


def test_the_asgi_application_comes_from_the_settings() -> None:
    """serve finds the application from ASGI_APPLICATION, else beside WSGI_APPLICATION."""
    with override_settings(ASGI_APPLICATION="mysite.asgi.application"):
        assert asgi_application_path() == "mysite.asgi:application"
    with override_settings(ASGI_APPLICATION=None, WSGI_APPLICATION="chatsite.wsgi.application"):
        assert asgi_application_path() == "chatsite.asgi:application"
