"""Revocation across real processes: two uvicorn servers over Redis, a third process changing the password."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.cookies
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import AsyncClient
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import ROOT, Server, serve
from tether.testing import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

RECHECK = 1.0  # SESSION_RECHECK of the servers, seconds


@pytest.fixture(scope="module")
def env(django_db_setup: None) -> dict[str, str]:
    """The servers' and the third process's environment: Redis under a prefix of this run's own."""
    tether = {
        "OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": f"tether-auth-{uuid.uuid4().hex[:8]}:"},
        "SESSION_RECHECK": RECHECK,
    }
    return {
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"]),
        "TETHER_TEST_SETTINGS": json.dumps(tether),
    }


@pytest.fixture(scope="module")
def two(env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    from tests.conftest import require_service

    require_service("Redis", "127.0.0.1", 6379)
    with serve("uvicorn-sansio", env=env) as a, serve("uvicorn-sansio", env=env) as b:
        yield a, b


@pytest.fixture
def ann(transactional_db: None) -> User:
    return User.objects.create_user("ann", password="secret-old-1")


@contextlib.asynccontextmanager
async def opened(*targets: tuple[Server, str]) -> AsyncIterator[list[ClientConnection]]:
    """A /ws/auth/me/ socket per (server, cookie), each past its first frame (signed in)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for server, cookie in targets:
            ws = await stack.enter_async_context(
                ws_connect(f"{server.url}/ws/auth/me/", additional_headers={"Cookie": cookie})
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["user"] == "ann"
            clients.append(ws)
        yield clients


async def closed_at(ws: ClientConnection, timeout: float) -> float:
    """Wait for the server to close ``ws`` with 4401 "sign in again"; returns when (monotonic)."""
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), timeout)
    at = time.monotonic()
    assert ws.close_code == 4401 and ws.close_reason == "sign in again", (ws.close_code, ws.close_reason)
    return at


async def echoes(ws: ClientConnection) -> None:
    await ws.send("sentinel")
    assert await asyncio.wait_for(ws.recv(), 10) == "sentinel"


CSRF = "tethertestcsrfsecret0123456789ab"  # 32 alphanumerics: a CSRF secret Django accepts as cookie and header


def post(server: Server, path: str, cookie: str) -> int:
    """POST ``path`` as the browser holding ``cookie`` would (LogoutView is CSRF-protected)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Cookie": f"{cookie}; csrftoken={CSRF}", "X-CSRFToken": CSRF, "Content-Length": "0"}
        conn.request("POST", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


async def third_process(env: dict[str, str], script: str, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()


def report(what: str, seconds: float) -> None:
    print(f"\n[revocation latency] {what}: {seconds * 1000:.0f} ms")


async def test_logout_on_a_closes_the_sessions_sockets_on_a_and_b(two: tuple[Server, Server], ann: User) -> None:
    """Logging out through process A closes that session's sockets on A and on B with 4401 within 2 s;
    the user's other session (on B) stays open."""
    a, b = two
    mine, other = await session_cookie(ann), await session_cookie(ann)
    async with opened((a, mine), (b, mine), (b, other)) as (on_a, on_b, elsewhere):
        started = time.monotonic()
        assert await asyncio.to_thread(post, a, "/accounts/logout/", mine) == 302
        ends = [await closed_at(ws, 2.0) for ws in (on_a, on_b)]
        report("logout on A -> closed on A", ends[0] - started)
        report("logout on A -> closed on B", ends[1] - started)
        assert max(ends) - started < 2.0
        await echoes(elsewhere)
    assert "logged out (closed 4401)" in a.log and "logged out (closed 4401)" in b.log


SET_PASSWORD = """
import sys, django
django.setup()
from django.contrib.auth.models import User
from django.test import AsyncClient
user = User.objects.get(username=sys.argv[1])
user.set_password("changed-elsewhere-2")
user.save()
"""

UPDATE_PASSWORD = """
import sys, django
django.setup()
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.test import AsyncClient
User.objects.filter(username=sys.argv[1]).update(password=make_password("changed-behind-3"))
"""


@pytest.mark.parametrize("how", ["set_password", "queryset update"])
async def test_password_change_in_a_third_process_closes_the_users_sockets(
    two: tuple[Server, Server], env: dict[str, str], ann: User, how: str
) -> None:
    """A password changed through the ORM in a third process closes the user's sockets on both servers
    within SESSION_RECHECK: set_password()+save() at once (its signal publishes), a queryset update
    (no signal) at the next re-check."""
    a, b = two
    cookie = await session_cookie(ann)
    async with opened((a, cookie), (b, cookie)) as clients:
        started = time.monotonic()
        watching = [asyncio.ensure_future(closed_at(ws, RECHECK + 60)) for ws in clients]
        await third_process(env, SET_PASSWORD if how == "set_password" else UPDATE_PASSWORD, "ann")
        changed = time.monotonic()  # the change committed before the process exited
        ends = await asyncio.gather(*watching)
        report(f"third process ({how}) ran for", changed - started)
        report(f"password change ({how}) -> closed on A and B, after the third process exited", max(ends) - changed)
        assert max(ends) - changed < RECHECK + 0.5
    assert "password changed (closed 4401)" in a.log and "password changed (closed 4401)" in b.log


async def test_a_forged_revocation_from_another_key_is_ignored(
    two: tuple[Server, Server], env: dict[str, str], ann: User
) -> None:
    """A process with another SECRET_KEY publishing on the control group closes nothing (logged)."""
    a, b = two
    cookie = await session_cookie(ann)
    script = (
        "import sys, django\ndjango.setup()\nfrom tether import broadcast_sync\n"
        "from django.core import signing\n"
        "broadcast_sync('tether.revocation', signing.dumps({'k': 'user', 'u': sys.argv[1], 'f': 1, 'i': 'forged'},"
        " key='not-the-site-key', salt='tether.revocation'))\n"
    )
    async with opened((a, cookie), (b, cookie)) as clients:
        await third_process(env, script, str(ann.pk))
        for ws in clients:
            await echoes(ws)
    assert "without a valid signature" in a.log


def test_processes_used_their_own_redis_prefix(env: dict[str, str]) -> None:
    """Guard: these servers' revocations never reach another run's servers on the shared Redis."""
    options: dict[str, Any] = json.loads(env["TETHER_TEST_SETTINGS"])["OPTIONS"]
    assert options["prefix"].startswith("tether-auth-") and options["prefix"] != "tether-test:"


def post_form(server: Server, path: str, cookie: str, form: dict[str, str]) -> tuple[int, str | None]:
    """POST a form as the browser holding ``cookie``; returns the status and the new session cookie, if set."""
    body = urllib.parse.urlencode(form)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {
            "Cookie": f"{cookie}; csrftoken={CSRF}",
            "X-CSRFToken": CSRF,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        jar = http.cookies.SimpleCookie()
        for value in response.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        new = jar.get(settings.SESSION_COOKIE_NAME)
        return response.status, f"{settings.SESSION_COOKIE_NAME}={new.value}" if new is not None else None
    finally:
        conn.close()


async def test_password_change_view_on_a_keeps_that_browsers_sockets_on_b(
    two: tuple[Server, Server], ann: User
) -> None:
    """PasswordChangeView served by uvicorn (Django's ASGI handler, a thread per request): the changing
    session's socket on B stays open, the other session's socket on B closes; the changing browser's
    logout, with its new cookie, then closes the kept socket."""
    a, b = two
    client = AsyncClient()
    assert await client.alogin(username="ann", password="secret-old-1")
    mine = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    async with opened((b, mine), (b, await session_cookie(ann))) as (kept, other):
        form = {"old_password": "secret-old-1", "new_password1": "new-secret-2", "new_password2": "new-secret-2"}
        status, new_cookie = await asyncio.to_thread(post_form, a, "/accounts/password_change/", mine, form)
        assert status == 302 and new_cookie is not None and new_cookie != mine
        await closed_at(other, 5)
        await echoes(kept)
        assert await asyncio.to_thread(post, a, "/accounts/logout/", new_cookie) == 302
        await closed_at(kept, 5)
    assert "their session changed the password" in b.log


# -- new handshakes after a revocation (the login cache) -------------------------------------------


async def greets_on(server: Server, cookie: str) -> None:
    """The members-only socket admits ``cookie`` on ``server``."""
    async with ws_connect(f"{server.url}/ws/auth/members/", additional_headers={"Cookie": cookie}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"hello": "ann"}


async def refused_on(server: Server, cookie: str) -> None:
    """The members-only socket refuses ``cookie`` on ``server`` (HTTP 403: login required)."""
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{server.url}/ws/auth/members/", additional_headers={"Cookie": cookie}):
            pass
    assert refused.value.response.status_code == 403


@pytest.fixture(scope="module")
def alone(django_db_setup: None) -> Iterator[Server]:
    """One uvicorn process on the memory backend: the login cache is on there."""
    env = {"TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"])}
    with serve("uvicorn-sansio", env=env) as server:
        yield server


async def test_logout_between_two_handshakes_on_one_server_refuses_the_second(alone: Server, ann: User) -> None:
    """Memory backend, login cache on: a session admitted (and cached) at one handshake, logged out
    through the same server's LogoutView, is refused at the next; another session of the user is not."""
    mine, other = await session_cookie(ann), await session_cookie(ann)
    await greets_on(alone, mine)
    await greets_on(alone, other)
    await greets_on(alone, mine)  # from the cache
    assert await asyncio.to_thread(post, alone, "/accounts/logout/", mine) == 302
    await refused_on(alone, mine)
    await greets_on(alone, other)


async def test_password_change_between_two_handshakes_on_one_server_refuses_the_old_session(
    alone: Server, ann: User
) -> None:
    """Memory backend, login cache on: after the password change view ran on the server, the user's
    other session (cached at its last handshake) is refused, the changing browser's new cookie admitted."""
    client = AsyncClient()
    assert await client.alogin(username="ann", password="secret-old-1")
    mine = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    other = await session_cookie(ann)
    await greets_on(alone, mine)
    await greets_on(alone, other)
    form = {"old_password": "secret-old-1", "new_password1": "new-secret-3", "new_password2": "new-secret-3"}
    status, new_cookie = await asyncio.to_thread(post_form, alone, "/accounts/password_change/", mine, form)
    assert status == 302 and new_cookie is not None
    await refused_on(alone, other)
    await refused_on(alone, mine)
    await greets_on(alone, new_cookie)


async def test_logout_on_a_refuses_the_next_handshake_on_b(two: tuple[Server, Server], ann: User) -> None:
    """Two processes over Redis: a session admitted on B, logged out through A, is refused at its next
    handshake on B at once (B reads the session store at every handshake: no login cache there)."""
    a, b = two
    cookie = await session_cookie(ann)
    await greets_on(b, cookie)
    await greets_on(b, cookie)
    assert await asyncio.to_thread(post, a, "/accounts/logout/", cookie) == 302
    await refused_on(b, cookie)


async def test_password_change_in_a_third_process_refuses_the_next_handshake_on_b(
    two: tuple[Server, Server], env: dict[str, str], ann: User
) -> None:
    """Two processes over Redis: a password changed by a third process (a queryset update: no signal
    at all) refuses the session's next handshake on B at once."""
    _, b = two
    cookie = await session_cookie(ann)
    await greets_on(b, cookie)
    await third_process(env, UPDATE_PASSWORD, "ann")
    await refused_on(b, cookie)
