"""Deployment as documented in docs/deployment.md, against a real nginx and real uvicorn processes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.chat import ChatServer, chat_env, manage, session_cookie
from tests.conftest import require_service
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
    the Redis backend (TETHER_BACKEND=redis), or to PostgreSQL for both the database
    (DATABASE_URL) and the backend (TETHER_BACKEND=postgres, LISTEN/NOTIFY).
    """
    with contextlib.ExitStack() as stack:
        env = chat_env(tmp_path_factory.mktemp("chat"), settings="tests.chat_settings", TETHER_BACKEND=request.param)
        if request.param == "redis":
            require_service("Redis", "127.0.0.1", 6379)
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


async def chat_socket(server: ChatServer, cookie: str, room: str = "lobby") -> tuple[ClientConnection, int]:
    """A chat socket logged in with ``cookie``, once its history arrived; and the PID of its worker."""
    ws = await websockets.connect(
        f"{server.url}/ws/rooms/{room}/",
        origin=websockets.Origin(server.http_url),
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=10,
    )
    assert ws.response is not None
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first["type"] == "history"  # joined: the worker is subscribed to the room's group
    return ws, int(ws.response.headers["X-Worker-Pid"])


async def next_of_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` (skipping others), within 10 s."""

    async def find() -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame

    return await asyncio.wait_for(find(), 10)


async def test_workers_chat_across_processes(workers: ChatServer) -> None:
    """Two users whose sockets two different worker processes serve chat with each other through the broker."""
    alice_cookie = session_cookie(workers.env, "alice")
    bob_cookie = session_cookie(workers.env, "bob")
    alice, alice_pid = await chat_socket(workers, alice_cookie)
    bob = None
    for _ in range(60):  # the kernel hands each connection to one worker: retry until the other one answers
        candidate, pid = await chat_socket(workers, bob_cookie)
        if pid != alice_pid:
            bob, bob_pid = candidate, pid
            break
        await candidate.close()
    assert bob is not None, f"all 60 connections landed on worker {alice_pid}"
    assert workers.server is not None
    assert parent_pid(alice_pid) == parent_pid(bob_pid) == workers.server.process.pid  # two workers, one server
    async with alice, bob:
        await alice.send(json.dumps({"text": f"hello from worker {alice_pid}"}))
        got = await next_of_type(bob, "message")
        assert (got["user"], got["text"]) == ("alice", f"hello from worker {alice_pid}")
        assert (await next_of_type(alice, "message"))["id"] == got["id"]  # the room includes its author
        await bob.send(json.dumps({"text": "@alice hi from the other worker"}))
        assert (await next_of_type(alice, "message"))["text"] == "@alice hi from the other worker"
        mention = await next_of_type(alice, "mention")  # user_group(alice) crosses processes too
        assert (mention["user"], mention["room"]) == ("bob", "lobby")


async def test_chat_behind_nginx_over_wss(workers: ChatServer, site: Site) -> None:
    """The documented whole: nginx (TLS) -> uvicorn workers -> broker. The https page links a wss://
    socket, and the Origin check accepts the https origin because nginx forwards the scheme.
    """
    cookie = session_cookie(workers.env, "carol")
    with run_nginx(site, site_config(site, workers.port)) as nginx:
        request = urllib.request.Request(f"{nginx.https_url}/rooms/lobby/", headers={"Cookie": f"sessionid={cookie}"})
        html = await asyncio.to_thread(fetch, request, site)
        # Host $http_host: the public name and port, so the page links the socket it can reach
        assert f'data-socket-url="wss://127.0.0.1:{site.https_port}/ws/rooms/lobby/"' in html
        headers = {"Cookie": f"sessionid={cookie}"}
        async with websockets.connect(
            f"{nginx.wss_url}/ws/rooms/lobby/",
            ssl=trusting(site),
            origin=websockets.Origin(nginx.https_url),
            additional_headers=headers,
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "history"
            await ws.send(json.dumps({"text": "through nginx"}))
            frame = await next_of_type(ws, "message")
            assert (frame["user"], frame["text"]) == ("carol", "through nginx")
        with pytest.raises(InvalidStatus) as info:  # an http:// page may not open a wss:// socket
            async with websockets.connect(
                f"{nginx.wss_url}/ws/rooms/lobby/",
                ssl=trusting(site),
                origin=websockets.Origin(f"http://127.0.0.1:{site.https_port}"),
                additional_headers=headers,
            ):
                pass
        assert info.value.response.status_code == 403
