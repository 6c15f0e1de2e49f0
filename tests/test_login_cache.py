"""The login cache: a session validated at one handshake is reused by the next, and never after a revocation.

In process, through tether.testing (memory backend, where the cache is on). The real-server
counterparts are in tests/test_revocation_servers.py (a single uvicorn process on the memory backend,
and two processes over Redis, where the cache is off).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.test import AsyncClient

from tether import CloseCode
from tether.auth import cached_login
from tether.testing import Rejected, connect, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ann(transactional_db: None) -> User:
    return User.objects.create_user("ann", password="secret-old-1")


class Reads:
    """Counts session loads and user lookups (what Django's get_user reads from the database)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads = self.lookups = 0
        load, lookup = DbSessionStore.load, ModelBackend.get_user

        def counting_load(store: DbSessionStore) -> Any:
            self.loads += 1
            return load(store)

        def counting_lookup(backend: ModelBackend, user_id: Any) -> Any:
            self.lookups += 1
            return lookup(backend, user_id)

        monkeypatch.setattr(DbSessionStore, "load", counting_load)
        monkeypatch.setattr(ModelBackend, "get_user", counting_lookup)

    def take(self) -> tuple[int, int]:
        counts = (self.loads, self.lookups)
        self.loads = self.lookups = 0
        return counts


async def greeted(cookie: str) -> str:
    """Open the members-only socket with ``cookie``; its greeting's user name."""
    async with connect("/ws/auth/members/", headers={"Cookie": cookie}) as ws:
        return str((await ws.receive_json())["hello"])


async def refused(cookie: str) -> None:
    with pytest.raises(Rejected) as rejected:
        async with connect("/ws/auth/members/", headers={"Cookie": cookie}):
            pass
    assert rejected.value.code == CloseCode.UNAUTHORIZED or rejected.value.status == 403


def client_with(cookie: str) -> AsyncClient:
    client = AsyncClient()
    client.cookies[settings.SESSION_COOKIE_NAME] = cookie.split("=", 1)[1]
    return client


async def test_second_handshake_with_the_session_reads_nothing(ann: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first handshake reads the session and the user (one hop: both in the same sync call); the
    next ones with the same cookie read neither, and each socket still gets its own user object."""
    cookie = await session_cookie(ann)
    reads = Reads(monkeypatch)
    assert await greeted(cookie) == "ann"
    assert reads.take() == (1, 1)
    async with (
        connect("/ws/auth/me/", headers={"Cookie": cookie}) as one,
        connect("/ws/auth/me/", headers={"Cookie": cookie}) as two,
    ):
        assert (await one.receive_json())["user"] == (await two.receive_json())["user"] == "ann"
    assert reads.take() == (0, 0)
    first, second = cached_login(cookie.split("=", 1)[1]), cached_login(cookie.split("=", 1)[1])
    assert first is not None and second is not None
    assert first[0] == second[0] == ann and first[0] is not second[0]


async def test_without_the_cache_every_handshake_reads_the_store(
    ann: User, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """LOGIN_CACHE=None: each handshake reads the session and the user again (still one hop each)."""
    settings.TETHER = {"LOGIN_CACHE": None}
    cookie = await session_cookie(ann)
    reads = Reads(monkeypatch)
    for _ in range(2):
        assert await greeted(cookie) == "ann"
        assert reads.take() == (1, 1)


async def test_logout_between_two_handshakes_refuses_the_second(ann: User) -> None:
    """A session logged out (Django's LogoutView) after a handshake cached it is refused at the next."""
    cookie = await session_cookie(ann)
    assert await greeted(cookie) == "ann"
    response = await client_with(cookie).post("/accounts/logout/")
    assert response.status_code == 302
    await refused(cookie)


@pytest.mark.parametrize("how", ["set_password", "deactivate", "delete"])
async def test_password_change_deactivation_or_deletion_refuses_the_next_handshake(ann: User, how: str) -> None:
    """A password changed (set_password + save), a user deactivated or deleted after a handshake
    cached the session: the next handshake with it is refused."""
    cookie = await session_cookie(ann)
    assert await greeted(cookie) == "ann"
    if how == "set_password":
        ann.set_password("secret-new-2")
        await ann.asave()
    elif how == "deactivate":
        ann.is_active = False
        await ann.asave(update_fields=["is_active"])
    else:
        await ann.adelete()
    await refused(cookie)


async def test_password_change_view_refuses_the_old_cookie_and_admits_the_new(ann: User) -> None:
    """Django's password change view (update_session_auth_hash: a new session key): the old cookie
    is refused at the next handshake, the browser's new cookie is admitted."""
    cookie = await session_cookie(ann)
    assert await greeted(cookie) == "ann"
    client = client_with(cookie)
    response = await client.post(
        "/accounts/password_change/",
        {"old_password": "secret-old-1", "new_password1": "new-password-2x", "new_password2": "new-password-2x"},
    )
    assert response.status_code == 302, response.content
    new_cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    assert new_cookie != cookie
    await refused(cookie)
    assert await greeted(new_cookie) == "ann"


async def test_a_new_login_drops_the_users_cached_sessions(ann: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging in again (login() cycles the session key, deleting the old one) drops the user's cached
    logins: the next handshake with an existing session reads the store again."""
    cookie = await session_cookie(ann)
    assert await greeted(cookie) == "ann"
    reads = Reads(monkeypatch)
    await AsyncClient().alogin(username="ann", password="secret-old-1")
    assert await greeted(cookie) == "ann"
    assert reads.take()[1] == 1
