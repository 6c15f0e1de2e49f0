"""Sockets closed (4401, "sign in again") when the login behind them ends, in-process (tether.testing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import import_module
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, aget_user, alogout
from django.contrib.auth.models import User
from django.core import signing
from django.http import HttpRequest
from django.test import AsyncClient

from tether import BackendUnavailable, CloseCode, broadcast
from tether import revocation as revocation_module
from tether.auth import LOGIN_KEY, session_ref
from tether.hub import get_hub
from tether.revocation import CONTROL_GROUP, aclose_user_sockets, close_user_sockets
from tether.testing import WebSocketTestClient, connect, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "secret-old-1"


@pytest.fixture(autouse=True)
def fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ann(transactional_db: None) -> User:
    return User.objects.create_user("ann", password=PASSWORD)


@pytest.fixture
def bob(transactional_db: None) -> User:
    return User.objects.create_user("bob", password=PASSWORD)


@asynccontextmanager
async def sockets(*cookies: str) -> AsyncIterator[list[WebSocketTestClient]]:
    """One open /ws/auth/me/ socket per cookie, each past its first frame."""
    async with AsyncExitStack() as stack:
        opened = []
        for cookie in cookies:
            ws = await stack.enter_async_context(connect("/ws/auth/me/", headers={"Cookie": cookie}, timeout=5))
            assert (await ws.receive_json())["user"] is not None
            opened.append(ws)
        yield opened


async def still_open(*clients: WebSocketTestClient) -> None:
    """Sentinel: each socket still echoes."""
    for ws in clients:
        await ws.send_text("sentinel")
        assert await ws.receive_text() == "sentinel"


async def closed_for_login(*clients: WebSocketTestClient) -> None:
    for ws in clients:
        assert await ws.wait_closed() == CloseCode.UNAUTHORIZED
        assert ws.close_reason == "sign in again"


async def settled() -> None:
    """Wait for the re-checks this process started (white box: the registry's tasks)."""
    registry = revocation_module._registry
    while registry is not None and registry.tasks:
        await asyncio.gather(*list(registry.tasks), return_exceptions=True)


def key_of(cookie: str) -> str:
    return cookie.split("=", 1)[1]


def client_with(cookie: str) -> AsyncClient:
    client = AsyncClient()
    client.cookies[settings.SESSION_COOKIE_NAME] = key_of(cookie)
    return client


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tether.auth"]


@pytest.fixture(autouse=True)
def auth_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether")


# -- logout ---------------------------------------------------------------------------


async def test_logout_closes_that_sessions_sockets_only(ann: User, bob: User, caplog: pytest.LogCaptureFixture) -> None:
    """Logging out through Django's LogoutView closes the sockets opened with that session (both tabs);
    the same user's other session and another user stay open."""
    first, second, bobs = await session_cookie(ann), await session_cookie(ann), await session_cookie(bob)
    async with sockets(first, first, second, bobs) as (tab1, tab2, elsewhere, bob_tab):
        response = await client_with(first).post("/accounts/logout/")
        assert response.status_code == 302
        await closed_for_login(tab1, tab2)
        await still_open(elsewhere, bob_tab)
    assert lines(caplog).count(f"Closing websocket /ws/auth/me/ for user {ann.pk}: logged out (closed 4401)") == 2


async def test_async_logout_closes_the_sessions_sockets(ann: User) -> None:
    """alogout() (the async twin) closes them too."""
    cookie = await session_cookie(ann)
    async with sockets(cookie) as (ws,):
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(key_of(cookie))
        request.auser = lambda: aget_user(request)  # type: ignore[attr-defined]
        await alogout(request)
        await closed_for_login(ws)


async def test_publish_failure_does_not_break_the_logout(
    ann: User, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refusing the revocation is logged as an error; the logout completes, and this
    process's sockets close anyway (applied here without the broker)."""

    def unavailable(group: str, message: Any) -> None:
        raise BackendUnavailable("Redis at 127.0.0.1:1 is unreachable")

    monkeypatch.setattr(revocation_module, "broadcast_sync", unavailable)
    cookie = await session_cookie(ann)
    async with sockets(cookie) as (ws,):
        response = await client_with(cookie).post("/accounts/logout/")
        assert response.status_code == 302
        await closed_for_login(ws)
    assert not await import_module(settings.SESSION_ENGINE).SessionStore(key_of(cookie)).aexists(key_of(cookie))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"Could not tell the other processes about the logout of user {ann.pk}" in e for e in errors), errors


# -- password change, deactivation, deletion ---------------------------------------------


async def test_password_change_through_the_orm_closes_all_the_users_sockets(ann: User, bob: User) -> None:
    """set_password() + save() outside any request: every socket of the user closes; bob's stays."""
    async with sockets(await session_cookie(ann), await session_cookie(ann), await session_cookie(bob)) as (a, b, c):
        ann.set_password("new-password-2")
        await ann.asave()
        await closed_for_login(a, b)
        await still_open(c)


async def change_password(client: AsyncClient, new: str = "new-password-2") -> None:
    response = await client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302, response.content


async def test_password_change_view_keeps_the_changing_sessions_sockets(
    ann: User, caplog: pytest.LogCaptureFixture
) -> None:
    """Through PasswordChangeView (update_session_auth_hash): the other session's socket closes, the
    changing session's stays, survives a re-check though its old key is gone, and closes at its logout."""
    client = AsyncClient()
    assert await client.alogin(username="ann", password=PASSWORD)
    mine = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    async with sockets(mine, await session_cookie(ann)) as (kept, other):
        await change_password(client)
        await closed_for_login(other)
        await still_open(kept)
        assert client.cookies[settings.SESSION_COOKIE_NAME].value != key_of(mine)  # the key was cycled
        await aclose_user_sockets(ann)  # a re-check now: the kept socket stands on the new password
        await settled()
        await still_open(kept)
        await client.post("/accounts/logout/")  # with the new cookie: the login id finds the kept socket
        await closed_for_login(kept)
    assert f"Keeping 1 websocket(s) of user {ann.pk} open: their session changed the password" in lines(caplog)


async def test_changing_another_users_password_keeps_the_changers_sockets(ann: User, bob: User) -> None:
    """An admin-style form: bob's session sets ann's password (and update_session_auth_hash cycles bob's
    key). ann's sockets close; bob's stay, also through a re-check of his (old, deleted) session key."""
    client = AsyncClient()
    assert await client.alogin(username="bob", password=PASSWORD)
    bobs = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    async with sockets(await session_cookie(ann), bobs) as (anns, admin):
        response = await client.post("/accounts/set-password/ann/", {"password": "new-password-2"})
        assert response.status_code == 200
        await closed_for_login(anns)
        assert client.cookies[settings.SESSION_COOKIE_NAME].value != key_of(bobs)  # bob's key was cycled
        await aclose_user_sockets(bob)
        await settled()
        await still_open(admin)


async def test_session_without_a_login_id_is_not_exempted(ann: User) -> None:
    """A session tether never marked (logged in before it was installed) can't be followed across
    the key change: its sockets close with the others."""
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    await store.aset(SESSION_KEY, str(ann.pk))
    await store.aset(BACKEND_SESSION_KEY, "django.contrib.auth.backends.ModelBackend")
    await store.aset(HASH_SESSION_KEY, ann.get_session_auth_hash())
    await store.asave()
    cookie = f"{settings.SESSION_COOKIE_NAME}={store.session_key}"
    async with sockets(cookie) as (ws,):
        await change_password(client_with(cookie))
        await closed_for_login(ws)


async def test_deactivation_and_deletion_close_the_users_sockets(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """is_active=False closes every socket of the user; so does deleting the user."""
    async with sockets(await session_cookie(ann)) as (ws,):
        ann.is_active = False
        await ann.asave()
        await closed_for_login(ws)
    ann.is_active = True
    await ann.asave()
    async with sockets(await session_cookie(ann)) as (ws,):
        await ann.adelete()
        await closed_for_login(ws)
    log = lines(caplog)
    assert any(line.endswith("user deactivated (closed 4401)") for line in log)
    assert any(line.endswith("user deleted (closed 4401)") for line in log)


async def test_saving_the_user_otherwise_closes_nothing(ann: User) -> None:
    """A save that changes neither password nor is_active (last_login, a name) revokes nothing."""
    async with sockets(await session_cookie(ann)) as (ws,):
        ann.first_name = "Ann"
        await ann.asave()
        await ann.asave(update_fields=["last_login"])
        await settled()
        await still_open(ws)


# -- re-checks ---------------------------------------------------------------------------


async def test_close_user_sockets_closes_those_whose_session_ended(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """After a session is deleted, close_user_sockets(user) closes its sockets now; the live session's
    stay. force=True closes them all."""
    gone, live = await session_cookie(ann), await session_cookie(ann)
    async with sockets(gone, live) as (dead, alive):
        await import_module(settings.SESSION_ENGINE).SessionStore(key_of(gone)).adelete()
        await sync_to_async(close_user_sockets)(ann)
        await closed_for_login(dead)
        await settled()
        await still_open(alive)
        await aclose_user_sockets(ann, force=True)
        await closed_for_login(alive)
    log = lines(caplog)
    assert f"Closing websocket /ws/auth/me/ for user {ann.pk}: session ended (closed 4401)" in log
    assert f"Closing websocket /ws/auth/me/ for user {ann.pk}: closed by the application (closed 4401)" in log


@pytest.mark.parametrize("ending", ["session deleted", "password updated behind the ORM's back"])
async def test_periodic_recheck_closes_a_socket_whose_login_ended(
    ann: User, settings: Any, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """With no signal to say so (a deleted session, a queryset update), the SESSION_RECHECK re-check
    closes the socket within the period."""
    settings.TETHER = {"SESSION_RECHECK": 0.2}
    cookie = await session_cookie(ann)
    async with sockets(cookie) as (ws,):
        if ending == "session deleted":
            await import_module(settings.SESSION_ENGINE).SessionStore(key_of(cookie)).adelete()
        else:
            await User.objects.filter(pk=ann.pk).aupdate(password="md5$x$0123")
        await closed_for_login(ws)
    why = "session ended" if ending == "session deleted" else "password changed"
    assert f"Closing websocket /ws/auth/me/ for user {ann.pk}: {why} (closed 4401)" in lines(caplog)


async def test_recheck_keeps_a_live_session(ann: User, settings: Any) -> None:
    """Re-checks of a valid session close nothing (several periods pass, then a sentinel)."""
    settings.TETHER = {"SESSION_RECHECK": 0.05}
    async with sockets(await session_cookie(ann)) as (ws,):
        registry = revocation_module._registry
        assert registry is not None
        checks: list[Any] = []
        three = asyncio.Event()
        original = registry.check

        async def counting(login: Any) -> None:
            await original(login)
            checks.append(login)
            if len(checks) >= 3:
                three.set()

        registry.check = counting  # type: ignore[method-assign]
        await asyncio.wait_for(three.wait(), 10)
        await still_open(ws)


# -- the control channel -------------------------------------------------------------------


async def test_forged_control_message_is_ignored(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """Only signed messages revoke: an unsigned broadcast to the control group, or one signed with
    another key, closes nothing and is logged."""
    async with sockets(await session_cookie(ann)) as (ws,):
        await broadcast(CONTROL_GROUP, {"k": "user", "u": str(ann.pk), "f": 1, "i": "forged"})
        forged = signing.dumps(
            {"k": "user", "u": str(ann.pk), "f": 1, "i": "x"}, key="another", salt="tether.revocation"
        )
        await broadcast(CONTROL_GROUP, forged)
        await still_open(ws)
    warnings = [line for line in lines(caplog) if "without a valid signature" in line]
    assert len(warnings) == 2


async def test_login_gets_an_id_that_survives_the_key_change(ann: User) -> None:
    """alogin() writes tether's login id into the session; cycle_key() keeps it."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(key_of(await session_cookie(ann)))
    login_id = await store.aget(LOGIN_KEY)
    assert isinstance(login_id, str) and len(login_id) >= 16
    await store.acycle_key()
    assert await store.aget(LOGIN_KEY) == login_id


async def test_handshake_that_read_a_session_before_its_logout_is_anonymous(ann: User) -> None:
    """A logout applied while a handshake was reading the session: the socket gets no user."""
    cookie = await session_cookie(ann)
    await revocation_module.watch_revocations()
    registry = revocation_module._here()
    registry.apply({"k": "logout", "i": "race", "s": session_ref(key_of(cookie)), "u": str(ann.pk)})
    async with connect("/ws/auth/me/", headers={"Cookie": cookie}) as ws:
        assert (await ws.receive_json())["user"] is None


async def test_hub_watch_delivers_to_a_callback_and_unwatch_unsubscribes() -> None:
    """Hub.watch(): a process-level listener of a group (no socket), gone with unwatch()."""
    hub = await get_hub()
    got: list[Any] = []
    done = asyncio.Event()

    def listener(group: str, frame: Any) -> None:
        got.append((group, frame))
        done.set()

    await hub.watch("test.watched", listener)
    await hub.watch("test.watched", listener)  # idempotent
    await broadcast("test.watched", "hello")
    await asyncio.wait_for(done.wait(), 5)
    assert got == [("test.watched", "hello")] and "test.watched" not in hub.groups
    await hub.unwatch("test.watched", listener)
    assert "test.watched" not in hub._subscribed


async def test_a_session_signed_in_with_the_new_password_outlives_a_late_revocation(ann: User) -> None:
    """A revocation that arrives after the user signed in again with the new password (a slow broker)
    leaves the new session's socket open: it already stands on the new credentials."""
    ann.set_password("new-password-2")
    await User.objects.filter(pk=ann.pk).aupdate(password=ann.password)  # no signal: the revocation is "late"
    async with sockets(await session_cookie(ann)) as (ws,):
        ann._password = "new-password-2"  # type: ignore[attr-defined]  # now the save that reports it
        await ann.asave()
        await settled()
        await still_open(ws)
