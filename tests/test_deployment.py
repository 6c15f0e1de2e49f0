"""Deployment as documented in docs/deployment.md, against a real nginx and real uvicorn processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.chat import ChatServer, chat_env, manage, redis_prefix, session_cookie
from tests.conftest import require_service
from tests.nginx import (
    Nginx,
    Site,
    docs_site_config,
    run_nginx,
    site_config,
    site_directory,
    with_header_timeout,
    with_read_timeout,
    without_upgrade_headers,
)
from tests.servers import ROOT, Server, serve
from tests.serving import manage_serve
from tether.conf import DEFAULTS


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


def fetch(request: urllib.request.Request, site: Site) -> str:
    with urllib.request.urlopen(request, context=trusting(site), timeout=5) as response:
        return str(response.read().decode())


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


# -- the hardened recipe: what uvicorn lacks, nginx does -------------------------------

HEADER_TIMEOUT = 3  # the tests' client_header_timeout (the guide's 10 s, shortened)


def test_docs_config_is_hardened() -> None:
    """The documented config times out slow headers, caps each client, and outlasts the server's pings."""
    config = docs_site_config()
    assert re.search(r"^client_header_timeout \d+s;", config, re.MULTILINE)
    assert "limit_conn tether_conn 20;" in config and "limit_req zone=tether_req" in config
    assert re.search(r"^client_max_body_size \S+;", config, re.MULTILINE)
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", config)
    assert read_timeout is not None
    assert int(read_timeout.group(1)) > DEFAULTS["PING_INTERVAL"]  # pings are the upstream's traffic


@pytest.fixture(scope="module")
def served() -> Iterator[Server]:
    """``manage.py serve`` as the guide runs it, as nginx's upstream."""
    with manage_serve() as server:
        yield server


async def attack(nginx: Nginx, *args: str) -> Any:
    """Run ``tests.attack`` against nginx's https port in its own process; its JSON result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.attack", args[0], "127.0.0.1", str(nginx.site.https_port), *args[1:],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def latencies_during(nginx: Nginx, site: Site, attacking: Any) -> list[float]:
    """Round trips (ms) of a well-behaved wss:// client through nginx, every 20 ms while ``attacking`` runs."""
    task = asyncio.ensure_future(attacking)
    rtts: list[float] = []
    async with websockets.connect(
        f"{nginx.wss_url}/ws/echo/", ssl=trusting(site), origin=websockets.Origin(nginx.https_url)
    ) as ws:
        while not task.done():
            started = time.perf_counter()
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            rtts.append((time.perf_counter() - started) * 1000)
            await asyncio.wait([task], timeout=0.02)  # the client's pace, cut short when the attack ends
    task.result()
    return rtts


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_slowloris_through_nginx_is_cut_within_the_header_timeout(served: Server, site: Site) -> None:
    """200 slowloris clients (a header line a second, never done) are cut by nginx within
    client_header_timeout; a well-behaved socket's p99 round trip stays under 50 ms meanwhile.
    """
    config = with_header_timeout(site_config(site, served.port), f"{HEADER_TIMEOUT}s")
    with run_nginx(site, config) as nginx:
        result: list[Any] = []

        async def slowloris() -> None:
            result.extend(await attack(nginx, "slowloris", "200", "--max", str(HEADER_TIMEOUT * 4)))

        rtts = await latencies_during(nginx, site, slowloris())
        error_log = nginx.error_log
    lasted = [t for t in result if isinstance(t, float)]
    assert len(result) == 200 and len(lasted) == 200, [
        line for line in error_log.splitlines() if "[info]" not in line or "timed out" not in line
    ][:20]
    assert max(lasted) < HEADER_TIMEOUT + 1.5, sorted(lasted)[-5:]
    assert "client timed out" in error_log and "while reading client request headers" in error_log
    assert p99(rtts) < 50, f"p99 {p99(rtts):.1f} ms over {len(rtts)} round trips"
    print(
        f"slowloris x200 via nginx: cut after {min(lasted):.2f}-{max(lasted):.2f}s "
        f"(client_header_timeout {HEADER_TIMEOUT}s); good client p99 {p99(rtts):.1f} ms over {len(rtts)}"
    )


async def test_300_connections_from_one_address_are_capped(served: Server, site: Site) -> None:
    """300 handshakes at once from one address: nginx lets at most 20 sockets be open (limit_conn,
    limit_req), answers the rest 429, and a well-behaved socket's p99 round trip stays under 50 ms.
    """
    with run_nginx(site, site_config(site, served.port)) as nginx:
        result: dict[str, int] = {}

        async def flood() -> None:
            result.update(await attack(nginx, "flood", "300", "/ws/echo/", "--hold", "5"))

        rtts = await latencies_during(nginx, site, flood())
        error_log = nginx.error_log
    assert sum(result.values()) == 300, result
    assert set(result) <= {"101", "429"}, result
    assert 1 <= result.get("101", 0) <= 20 - 1, result  # the well-behaved client holds one of the 20
    assert "limiting" in error_log  # nginx logs each refusal ("limiting connections/requests by zone")
    assert p99(rtts) < 50, f"p99 {p99(rtts):.1f} ms over {len(rtts)} round trips"
    print(f"300 handshakes from one address via nginx: {result}; good client p99 {p99(rtts):.1f} ms over {len(rtts)}")


def test_oversized_request_line_gets_414_from_nginx(served: Server, site: Site) -> None:
    """A 16 KB request line (more than large_client_header_buffers' 8k) is answered 414 by nginx at once."""
    with run_nginx(site, site_config(site, served.port)) as nginx:
        connection = http.client.HTTPSConnection("127.0.0.1", nginx.site.https_port, context=trusting(site), timeout=10)
        connection.request("GET", "/ws/echo/?" + "a" * 16_000)
        assert connection.getresponse().status == 414
        connection.close()


@pytest.mark.parametrize("pings", ["1", "none"])
async def test_proxy_read_timeout_against_the_ping_interval(pings: str, site: Site) -> None:
    """With proxy_read_timeout (2 s here) above the server's ping interval (1 s) an idle socket stays
    open through nginx; with the pings off, nginx cuts it after proxy_read_timeout.
    """
    with manage_serve("--ws-ping-interval", pings) as upstream:
        with run_nginx(site, with_read_timeout(site_config(site, upstream.port), "2s")) as nginx:
            async with websockets.connect(
                f"{nginx.wss_url}/ws/echo/",
                ssl=trusting(site),
                origin=websockets.Origin(nginx.https_url),
                ping_interval=None,  # the client stays silent: only the server's pings cross nginx
            ) as ws:
                started = time.monotonic()
                try:
                    await asyncio.wait_for(ws.recv(), 4)  # twice proxy_read_timeout of silence
                except asyncio.TimeoutError:
                    await ws.send("sentinel")  # still open: the echo comes back
                    assert await asyncio.wait_for(ws.recv(), 5) == "sentinel"
                    kept = True
                except websockets.ConnectionClosed:
                    kept = False
                lasted = time.monotonic() - started
    assert kept is (pings != "none"), f"pings {pings}: open {lasted:.1f}s"
    if not kept:
        assert 1.5 < lasted < 3.5, lasted


# -- several worker processes, one Redis ------------------------------------


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the chat, dropped afterwards; yields its DATABASE_URL."""
    name = f"tether_chat_{os.getpid()}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module", params=["redis", "postgres"])
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    """The chat under ``uvicorn --workers 2``, switched by its environment variables to
    the Redis backend (TETHER_BACKEND=redis, its keys under a prefix of this run's own, deleted
    afterwards), or to PostgreSQL for both the database (DATABASE_URL) and the backend
    (TETHER_BACKEND=postgres, LISTEN/NOTIFY).
    """
    with contextlib.ExitStack() as stack:
        env = chat_env(tmp_path_factory.mktemp("chat"), settings="tests.chat_settings", TETHER_BACKEND=request.param)
        if request.param == "redis":
            require_service("Redis", "127.0.0.1", 6379)
            env["REDIS_PREFIX"] = stack.enter_context(redis_prefix("chat"))
        else:
            require_service("PostgreSQL", "127.0.0.1", 5432)
            env["DATABASE_URL"] = stack.enter_context(postgres_database())
        manage(env, "migrate", "--noinput")
        server = ChatServer(env, extra_args=("--workers", "2"))
        server.start()
        stack.callback(server.stop)
        yield server


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for process {pid}")


def page_config(server: ChatServer, cookie: str) -> dict[str, Any]:
    """The room page's ``chat-config`` (rooms, the groups to subscribe to), fetched with ``cookie``."""
    request = urllib.request.Request(f"{server.http_url}/rooms/lobby/", headers={"Cookie": f"sessionid={cookie}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        html = response.read().decode()
    found = re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', html)
    assert found, html
    config: dict[str, Any] = json.loads(found[1])
    return config


class Protocol:
    """A chat page's socket (tether.v1) driven by hand: numbered commands, replies, pushes."""

    def __init__(self, ws: ClientConnection, groups: dict[str, str] | None = None) -> None:
        self.ws = ws
        self.groups = groups or {}  # the page's groups (chat-config)
        self.connection = ""  # its id in presence
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []

    async def call(self, kind: str, **fields: Any) -> Any:
        """Send a command; its result (raises on an error reply), pushes before it kept for ``push``."""
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(json.dumps({"id": ident, "type": kind, **fields}))
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if "type" in frame:
                self.pushes.append(frame)
            elif frame["id"] == ident:
                assert "result" in frame, frame
                return frame["result"]

    async def push(self, kind: str, group: str) -> dict[str, Any]:
        """The next push of type ``kind`` for ``group``, within 10 s; other pushes are kept for later."""
        for n, frame in enumerate(self.pushes):
            if frame.get("type") == kind and frame.get("group") == group:
                return self.pushes.pop(n)

        async def find() -> dict[str, Any]:
            while True:
                frame: dict[str, Any] = json.loads(await self.ws.recv())
                if frame.get("type") == kind and frame.get("group") == group:
                    return frame
                self.pushes.append(frame)

        return await asyncio.wait_for(find(), 10)


async def chat_socket(server: ChatServer, cookie: str) -> tuple[Protocol, int]:
    """A page's socket logged in with ``cookie``, subscribed like the page to #lobby, the user's
    mentions and the online list; and the PID of its worker."""
    ws = await websockets.connect(
        f"{server.url}/ws/",
        origin=websockets.Origin(server.http_url),
        additional_headers={"Cookie": f"sessionid={cookie}"},
        subprotocols=[websockets.Subprotocol("tether.v1")],
        open_timeout=10,
    )
    assert ws.response is not None and ws.subprotocol == "tether.v1"
    groups = (await asyncio.to_thread(page_config, server, cookie))["groups"]
    client = Protocol(ws, groups)
    for group in (LOBBY, groups["mentions"], groups["online"]):
        await client.call("subscribe", group=group)  # the worker is subscribed to the group
    joined = await client.push("join", groups["online"])  # its own join comes first
    client.connection = joined["member"]["connection"]
    return client, int(ws.response.headers["X-Worker-Pid"])


LOBBY = "chat.room.lobby"


async def test_workers_chat_across_processes(workers: ChatServer) -> None:
    """Two users whose sockets two different worker processes serve chat with each other through the
    broker: messages (stored, stamped with their author), a mention to the user's group, and presence."""
    alice_cookie = session_cookie(workers.env, "alice")
    bob_cookie = session_cookie(workers.env, "bob")
    alice, alice_pid = await chat_socket(workers, alice_cookie)
    bob = None
    for _ in range(60):  # the kernel hands each connection to one worker: retry until the other one answers
        candidate, pid = await chat_socket(workers, bob_cookie)
        if pid != alice_pid:
            bob, bob_pid = candidate, pid
            break
        await candidate.ws.close()
    assert bob is not None, f"all 60 connections landed on worker {alice_pid}"
    assert workers.server is not None
    assert parent_pid(alice_pid) == parent_pid(bob_pid) == workers.server.process.pid  # two workers, one server
    async with alice.ws, bob.ws:
        while (await alice.push("join", "chat.online"))["member"]["connection"] != bob.connection:
            pass  # her own join first, then bob's (and his sockets that landed on her worker)
        members = (await alice.call("presence", group="chat.online"))["members"]
        assert sorted(m["info"]["name"] for m in members) == ["alice", "bob"]
        await alice.call("publish", group=LOBBY, data={"text": f"hello from worker {alice_pid}", "user": "mallory"})
        got = (await bob.push("message", LOBBY))["data"]
        assert (got["user"], got["text"]) == ("alice", f"hello from worker {alice_pid}")  # stamped by the server
        assert (await alice.push("message", LOBBY))["data"]["id"] == got["id"]  # the room includes its author
        await bob.call("publish", group=LOBBY, data={"text": "@alice hi from the other worker"})
        assert (await alice.push("message", LOBBY))["data"]["text"] == "@alice hi from the other worker"
        mention = (await alice.push("message", alice.groups["mentions"]))["data"]  # user_group(alice)
        assert (mention["type"], mention["user"], mention["room"]) == ("mention", "bob", "lobby")
        # Sent again with its nonce (the reply was lost to a dropped connection): stored once, the
        # stored message broadcast again, which pages show once by id.
        for _ in range(2):
            await bob.call("publish", group=LOBBY, data={"text": "said once", "nonce": "bob-1"})
        first, again = [(await alice.push("message", LOBBY))["data"] for _ in range(2)]
        assert first == again and first["text"] == "said once"


async def test_chat_behind_nginx_over_wss(workers: ChatServer, site: Site) -> None:
    """The documented whole: nginx (TLS) -> uvicorn workers -> broker. The https page links a wss://
    socket, and the Origin check accepts the https origin because nginx forwards the scheme.
    """
    cookie = session_cookie(workers.env, "carol")
    with run_nginx(site, site_config(site, workers.port)) as nginx:
        request = urllib.request.Request(f"{nginx.https_url}/rooms/lobby/", headers={"Cookie": f"sessionid={cookie}"})
        html = await asyncio.to_thread(fetch, request, site)
        # Host $http_host: the public name and port, so the page links the socket it can reach
        assert f'data-socket-url="wss://127.0.0.1:{site.https_port}/ws/"' in html
        headers = {"Cookie": f"sessionid={cookie}"}
        async with websockets.connect(
            f"{nginx.wss_url}/ws/",
            ssl=trusting(site),
            origin=websockets.Origin(nginx.https_url),
            additional_headers=headers,
            subprotocols=[websockets.Subprotocol("tether.v1")],
        ) as ws:
            client = Protocol(ws)
            await client.call("subscribe", group=LOBBY)
            await client.call("publish", group=LOBBY, data={"text": "through nginx"})
            data = (await client.push("message", LOBBY))["data"]
            assert (data["user"], data["text"]) == ("carol", "through nginx")
        with pytest.raises(InvalidStatus) as info:  # an http:// page may not open a wss:// socket
            async with websockets.connect(
                f"{nginx.wss_url}/ws/",
                ssl=trusting(site),
                origin=websockets.Origin(f"http://127.0.0.1:{site.https_port}"),
                additional_headers=headers,
            ):
                pass
        assert info.value.response.status_code == 403
