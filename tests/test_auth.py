"""Sessions and users on sockets, and the guards: login_required, permission_required, require."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.test import AsyncClient, override_settings

from tests.testapp.sockets import Editors, Members
from tether import CloseCode, InvalidState, WebSocket
from tether.auth import has_session_cookie
from tether.routing import SERVICES
from tether.testing import Rejected, connect

pytestmark = pytest.mark.django_db(transaction=True)  # the async ORM runs on another thread's connection

NO_HTTP_RESPONSE = {"extensions": {"tether.testing": {"exceptions": []}}}  # a server without the extension


@pytest.fixture(autouse=True)
def fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ann(transactional_db: None) -> User:
    return User.objects.create_user("ann", password="secret")


@pytest.fixture
def poster(transactional_db: None) -> User:
    user = User.objects.create_user("poster", password="secret")
    user.user_permissions.add(Permission.objects.get(codename="add_message"))
    return user


async def _session_cookie(user: User, **data: Any) -> str:
    """A session written by hand through the configured engine, the way django.contrib.auth.login does."""
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    await store.aset(SESSION_KEY, str(user.pk))
    await store.aset(BACKEND_SESSION_KEY, "django.contrib.auth.backends.ModelBackend")
    await store.aset(HASH_SESSION_KEY, user.get_session_auth_hash())
    for key, value in data.items():
        await store.aset(key, value)
    await store.asave()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


# -- session and user --------------------------------------------------------


async def test_test_client_login_cookie_gives_the_socket_its_user(ann: User) -> None:
    """A session made by Django's test client login() is the socket's session: socket.user is that user."""
    client = AsyncClient()
    assert await client.alogin(username="ann", password="secret")
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    async with connect("/ws/auth/whoami/", headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}) as ws:
        assert await ws.receive_json() == {"user": "ann", "same": True, "color": None}


async def test_no_cookie_means_anonymous_user() -> None:
    """Without a session cookie the user is AnonymousUser, not an error."""
    async with connect("/ws/auth/whoami/") as ws:
        assert (await ws.receive_json())["user"] is None


async def test_garbage_session_cookie_means_anonymous_user() -> None:
    """A session key that names no session resolves to AnonymousUser."""
    async with connect("/ws/auth/whoami/", headers={"Cookie": "sessionid=nosuchsessionkeyatall12345"}) as ws:
        assert (await ws.receive_json())["user"] is None


async def test_password_change_invalidates_the_socket_session(ann: User) -> None:
    """Django's session hash check applies: after a password change the old cookie is anonymous."""
    cookie = await _session_cookie(ann)
    ann.set_password("changed")
    await ann.asave()
    async with connect("/ws/auth/whoami/", headers={"Cookie": cookie}) as ws:
        assert (await ws.receive_json())["user"] is None


@pytest.mark.parametrize(
    "engine",
    [
        "django.contrib.sessions.backends.db",
        "django.contrib.sessions.backends.cache",
        "django.contrib.sessions.backends.cached_db",
        "django.contrib.sessions.backends.signed_cookies",
        "django.contrib.sessions.backends.file",
    ],
)
async def test_every_session_engine_works(engine: str, ann: User, tmp_path: Any) -> None:
    """The session and user come through whatever SESSION_ENGINE is configured."""
    with override_settings(SESSION_ENGINE=engine, SESSION_FILE_PATH=str(tmp_path)):
        cookie = await _session_cookie(ann, color="blue")
        async with connect("/ws/auth/whoami/", headers={"Cookie": f"theme=dark; {cookie}"}) as ws:
            assert await ws.receive_json() == {"user": "ann", "same": True, "color": "blue"}


async def test_connect_user_logs_in_through_the_configured_engine(ann: User) -> None:
    """connect(user=...) saves a real session (here signed cookies) and sends its cookie."""
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        async with connect("/ws/auth/whoami/", user=ann, headers={"Cookie": "theme=dark"}) as ws:
            assert (await ws.receive_json())["user"] == "ann"


async def test_user_before_auser_raises_invalid_state() -> None:
    """socket.user before it is resolved names the fix instead of blocking on the database."""

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None: ...

    socket = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
    with pytest.raises(InvalidState, match=r"await socket.auser\(\) first"):
        socket.user  # noqa: B018


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], False),
        ([(b"cookie", b"")], False),
        ([(b"cookie", b"theme=dark")], False),
        ([(b"cookie", b"sessionid=")], False),
        ([(b"cookie", b"sessionid=abc")], True),
        ([(b"Cookie", b"theme=dark; sessionid=abc")], True),  # a server that keeps the name's case
        # repeated: socket.headers joins them with ", ", so the cookies parse sees no sessionid (as before)
        ([(b"cookie", b"theme=dark"), (b"cookie", b"sessionid=abc")], False),
    ],
)
def test_has_session_cookie_answers_as_the_parsed_cookies_do(
    headers: list[tuple[bytes, bytes]], expected: bool
) -> None:
    """has_session_cookie() reads the scope when there is no Cookie header (no socket.headers built):
    the answer is the one the parsed cookies give, in every shape of header."""

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None: ...

    socket = WebSocket({"type": "websocket", "path": "/", "headers": headers}, receive, send)
    assert has_session_cookie(socket) is expected
    assert ("headers" in socket.__dict__) is bool(headers)  # built only when there is a header to read
    assert bool(socket.cookies.get(settings.SESSION_COOKIE_NAME)) is expected


class _Counter:
    """Counts session loads and user lookups (the database round trips of resolving a user)."""

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


async def test_user_is_resolved_once_and_only_with_a_session(
    ann: User, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """No session cookie costs no lookup; with one, the user is resolved once at accept() (for its user
    group) even if the handler never asks; concurrent and repeated auser() calls cost one. (The login
    cache, off here, would make later handshakes cost none: tests/test_login_cache.py.)"""
    settings.TETHER = {"LOGIN_CACHE": None}
    cookie = await _session_cookie(ann)
    counter = _Counter(monkeypatch)
    async with connect("/ws/echo/") as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"
    assert (counter.loads, counter.lookups) == (0, 0)
    async with connect("/ws/echo/", headers={"Cookie": cookie}) as ws:
        await ws.send_text("ping")
        assert await ws.receive_text() == "pong!"
    assert (counter.loads, counter.lookups) == (1, 1)
    counter.loads = counter.lookups = 0

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None: ...

    headers = [(b"cookie", cookie.encode())]
    socket = WebSocket({"type": "websocket", "path": "/", "headers": headers}, receive, send, services=SERVICES)
    first, second = await asyncio.gather(socket.auser(), socket.auser())
    assert first is second is await socket.auser() is socket.user
    assert first.get_username() == "ann"
    assert (counter.loads, counter.lookups) == (1, 1)


# -- guards on functions -------------------------------------------------------


async def test_login_required_refuses_anonymous_with_403(caplog: pytest.LogCaptureFixture) -> None:
    """An anonymous client is refused with HTTP 403 (body "4401 login required") and a WARNING line."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/private/"):
            pass
    assert (info.value.status, info.value.code) == (403, CloseCode.UNAUTHORIZED)
    assert info.value.body == b"4401 login required\n"
    [record] = [r for r in caplog.records if r.name == "tether.auth"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == "Refused websocket /ws/auth/private/ for user anonymous: login required (closed 4401)"


async def test_login_required_closes_4401_without_the_http_response_extension() -> None:
    """Where the server lacks websocket.http.response, the refusal is a close with 4401."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/private/", scope=NO_HTTP_RESPONSE):
            pass
    assert (info.value.code, info.value.reason) == (CloseCode.UNAUTHORIZED, "login required")


async def test_login_required_admits_a_logged_in_user(ann: User) -> None:
    """A logged-in user gets through login_required and the handler sees them."""
    async with connect("/ws/auth/private/", user=ann) as ws:
        assert (await ws.receive_json())["user"] == "ann"


async def test_permission_required_refuses_without_the_permission(ann: User) -> None:
    """A logged-in user lacking the permission is refused with 4403; anonymous with 4401."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/post/", user=ann, scope=NO_HTTP_RESPONSE):
            pass
    assert info.value.code == CloseCode.FORBIDDEN
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/post/"):
            pass
    assert info.value.code == CloseCode.UNAUTHORIZED


async def test_permission_required_admits_with_the_permission(poster: User) -> None:
    """A user holding the permission is admitted."""
    async with connect("/ws/auth/post/", user=poster) as ws:
        assert await ws.receive_json() == {"user": "poster"}


async def test_require_with_a_sync_predicate_of_the_user(ann: User) -> None:
    """require(sync predicate) reads socket.user: staff pass, others get 4403."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/staff/", user=ann):
            pass
    assert info.value.code == CloseCode.FORBIDDEN
    ann.is_staff = True
    await ann.asave()
    async with connect("/ws/auth/staff/", user=ann) as ws:
        assert await ws.receive_text() == "staff"


async def test_require_with_an_async_predicate_and_own_code() -> None:
    """require(async predicate, code=..., reason=...) refuses with that code and reason."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/token/?token=wrong", scope=NO_HTTP_RESPONSE):
            pass
    assert (info.value.code, info.value.reason) == (4418, "bad token")
    async with connect("/ws/auth/token/?token=sesame") as ws:
        assert await ws.receive_text() == "in"


# -- guards on SocketView classes -----------------------------------------------


async def test_guarded_socketview_refuses_before_connect(ann: User) -> None:
    """@login_required on a class refuses anonymous before connect(); no disconnect() either."""
    Members.calls.clear()
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/members/"):
            pass
    assert info.value.code == CloseCode.UNAUTHORIZED
    assert Members.calls == []
    async with connect("/ws/auth/members/", user=ann) as ws:
        assert await ws.receive_json() == {"hello": "ann"}
    assert Members.calls == ["connect", "disconnect 1000"]


async def test_guards_stack_on_subclasses(ann: User) -> None:
    """A subclass adds permission_required to its parent's login_required; the parent is unchanged."""
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/editors/", user=ann):
            pass
    assert info.value.code == CloseCode.FORBIDDEN
    await ann.user_permissions.aadd(await Permission.objects.aget(codename="change_message"))
    ann = await User.objects.aget(pk=ann.pk)  # fresh permission cache
    async with connect("/ws/auth/editors/", user=ann) as ws:
        assert await ws.receive_json() == {"hello": "ann"}
    assert (len(Members.guards), len(Editors.guards)) == (1, 2)


async def test_socketview_user_is_resolved_before_connect(ann: User) -> None:
    """self.user is usable in connect(): the user when logged in, AnonymousUser otherwise."""
    async with connect("/ws/auth/who/", user=ann) as ws:
        assert await ws.receive_json() == {"user": "ann", "auth": True}
    async with connect("/ws/auth/who/") as ws:
        assert await ws.receive_json() == {"user": None, "auth": False}


def test_guard_on_a_non_handler_raises_type_error() -> None:
    """Guards refuse to decorate a class that is not a SocketView."""
    from tether import login_required

    with pytest.raises(TypeError, match="SocketView"):
        login_required(int)


async def test_authenticated_sockets_join_their_user_group(ann: User) -> None:
    """Once its user is resolved, a socket receives what is broadcast to user_group(user); anonymous ones don't."""
    from tether import broadcast, user_group

    async with (
        connect("/ws/auth/members/", user=ann) as member,
        connect("/ws/auth/who/", timeout=0.3) as anonymous,
    ):
        await member.receive_json()
        await anonymous.receive_json()
        await broadcast(user_group(ann), {"notice": "your export is ready"})
        assert await member.receive_json() == {"notice": "your export is ready"}
        with pytest.raises(TimeoutError):
            await anonymous.receive()
