"""Bearer tokens: issued by tether.auth, accepted from the Authorization header or a bearer.<token> subprotocol."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.test import AsyncClient
from websockets.exceptions import InvalidStatus

from tests.servers import Server, serve
from tether import CloseCode, WebSocket, user_group
from tether.auth import _signer, credential_digest, issue_token
from tether.testing import Rejected, connect, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

TCHAR = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token: what a subprotocol entry may hold


@pytest.fixture(autouse=True)
def fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ann(transactional_db: None) -> User:
    return User.objects.create_user("ann", password="secret")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expired_token(user: User) -> str:
    """A correctly signed token whose expiry is in the past."""
    return _signer().sign_object({"u": str(user.pk), "h": credential_digest(user), "e": int(time.time()) - 1})


def auth_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tether.auth"]


# -- issuing ---------------------------------------------------------------------------


def test_token_is_a_valid_subprotocol_token_without_colons(ann: User) -> None:
    """The token uses only RFC 7230 token characters (browsers throw on anything else) and no ':'."""
    token = issue_token(ann)
    assert TCHAR.match(f"bearer.{token}") and ":" not in token


def test_issue_token_refuses_anonymous_users_and_bad_ages(ann: User) -> None:
    """An anonymous user has no token; a max_age of 0 or less is a mistake, not a token."""
    with pytest.raises(ValueError, match="authenticated"):
        issue_token(AnonymousUser())
    with pytest.raises(ValueError, match="positive"):
        issue_token(ann, max_age=0)


# -- accepted ---------------------------------------------------------------------------


async def test_authorization_header_gives_the_user_and_its_group(ann: User) -> None:
    """Authorization: Bearer <token> signs the socket in: socket.user and user_group(user), like a session."""
    async with connect("/ws/auth/me/", headers=bearer(issue_token(ann))) as ws:
        assert await ws.receive_json() == {"user": "ann", "groups": [user_group(ann)], "subprotocols": []}


async def test_subprotocol_form_gives_the_user_and_hides_the_token(ann: User) -> None:
    """["tether.v1", "bearer.<token>"]: the user is signed in, the handler sees only tether.v1 and selects it."""
    async with connect("/ws/auth/me/", subprotocols=["tether.v1", f"bearer.{issue_token(ann)}"]) as ws:
        assert ws.subprotocol == "tether.v1"
        assert await ws.receive_json() == {"user": "ann", "groups": [user_group(ann)], "subprotocols": ["tether.v1"]}


async def test_login_required_lets_a_token_in(ann: User) -> None:
    """Guards see the token's user: @login_required passes."""
    async with connect("/ws/auth/private/", headers=bearer(issue_token(ann))) as ws:
        assert (await ws.receive_json())["user"] == "ann"


def test_a_handler_can_not_select_the_token_entry() -> None:
    """bearer.* is missing from socket.subprotocols, and accept() refuses to echo it."""

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None: ...

    socket = WebSocket({"type": "websocket", "path": "/", "subprotocols": ["a", "bearer.x.y"]}, receive, send)
    assert socket.subprotocols == ["a"]
    with pytest.raises(ValueError, match="not offered"):
        async_to_sync(socket.accept)("bearer.x.y")


async def test_token_view_hands_a_working_token_to_a_signed_in_page(ann: User) -> None:
    """GET tether/token/ answers {"token", "max_age"} when signed in (401 when not); the token connects."""
    client = AsyncClient()
    anonymous = await client.get("/tether/token/")
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "login required"}
    assert await client.alogin(username="ann", password="secret")
    response = await client.get("/tether/token/")
    assert response.status_code == 200 and "no-cache" in response["Cache-Control"]
    body = response.json()
    assert body["max_age"] == 3600
    async with connect("/ws/auth/me/", subprotocols=["tether.v1", f"bearer.{body['token']}"]) as ws:
        assert (await ws.receive_json())["user"] == "ann"


async def test_query_string_token_is_ignored(ann: User) -> None:
    """A token in the URL (which ends up in access logs) signs nobody in."""
    token = issue_token(ann)
    async with connect(f"/ws/auth/me/?token={token}&access_token={token}") as ws:
        assert (await ws.receive_json())["user"] is None


# -- refused ----------------------------------------------------------------------------


async def refused(caplog: pytest.LogCaptureFixture, **kwargs: Any) -> tuple[Rejected, list[str]]:
    caplog.set_level(logging.INFO, logger="tether")
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/me/", **kwargs):
            pass
    return info.value, auth_lines(caplog)


async def test_tampered_token_is_refused_with_4401_and_logged_without_the_token(
    ann: User, caplog: pytest.LogCaptureFixture
) -> None:
    """A token with a changed byte is refused before the handler: HTTP 403, 4401, a log line with the reason only."""
    token = issue_token(ann)
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    rejected, lines = await refused(caplog, headers=bearer(tampered))
    assert (rejected.status, rejected.code, rejected.body) == (403, 4401, b"4401 invalid token\n")
    assert lines == ["Refused websocket /ws/auth/me/: invalid token: bad signature (closed 4401)"]
    assert all(token[:20] not in r.getMessage() and tampered[:20] not in r.getMessage() for r in caplog.records)


async def test_expired_token_is_refused(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """A token past its expiry is refused with 4401, the log line saying "expired"."""
    rejected, lines = await refused(caplog, subprotocols=["tether.v1", f"bearer.{expired_token(ann)}"])
    assert rejected.code == CloseCode.UNAUTHORIZED
    assert lines == ["Refused websocket /ws/auth/me/: invalid token: expired (closed 4401)"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda u: (u.set_password("changed"), u.save()), "password changed"),
        (lambda u: User.objects.filter(pk=u.pk).update(is_active=False), "user deactivated"),
        (lambda u: User.objects.filter(pk=u.pk).delete(), "user deleted"),
    ],
    ids=["password", "inactive", "deleted"],
)
async def test_voided_token_is_refused(ann: User, caplog: pytest.LogCaptureFixture, change: Any, reason: str) -> None:
    """A password change, deactivation or deletion voids the tokens issued before: 4401 and the reason logged."""
    token = issue_token(ann)
    await sync_to_async(change)(ann)
    rejected, lines = await refused(caplog, headers=bearer(token))
    assert rejected.code == CloseCode.UNAUTHORIZED
    assert f"Refused websocket /ws/auth/me/: invalid token: {reason} (closed 4401)" in lines


async def test_two_tokens_are_refused(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """A header and a subprotocol entry at once is ambiguous: refused, not guessed."""
    token = issue_token(ann)
    rejected, lines = await refused(caplog, headers=bearer(token), subprotocols=[f"bearer.{token}"])
    assert rejected.code == CloseCode.UNAUTHORIZED
    assert lines == ["Refused websocket /ws/auth/me/: invalid token: more than one token presented (closed 4401)"]


async def test_token_from_another_secret_key_is_refused(ann: User, settings: Any) -> None:
    """A token signed with another SECRET_KEY (another site) is a bad signature."""
    settings.SECRET_KEY = "another-site-entirely"
    token = issue_token(ann)
    settings.SECRET_KEY = "tests-only-not-secret"
    with pytest.raises(Rejected) as info:
        async with connect("/ws/auth/me/", headers=bearer(token)):
            pass
    assert info.value.code == CloseCode.UNAUTHORIZED


async def test_rotated_secret_key_keeps_tokens_valid_through_fallbacks(ann: User, settings: Any) -> None:
    """With the old key in SECRET_KEY_FALLBACKS, tokens issued before the rotation still connect."""
    token = issue_token(ann)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the-new-key-after-rotation"
    async with connect("/ws/auth/me/", headers=bearer(token)) as ws:
        assert (await ws.receive_json())["user"] == "ann"


# -- a token socket's life ---------------------------------------------------------------


async def test_token_socket_closes_when_the_token_expires(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """A token socket has no session to outlive it: it closes with 4401 at the token's expiry."""
    caplog.set_level(logging.INFO, logger="tether.auth")
    async with connect("/ws/auth/me/", headers=bearer(issue_token(ann, max_age=0.2)), timeout=5) as ws:
        await ws.receive_json()
        assert await ws.wait_closed() == CloseCode.UNAUTHORIZED
        assert ws.close_reason == "sign in again"
    assert f"Closing websocket /ws/auth/me/ for user {ann.pk}: token expired (closed 4401)" in auth_lines(caplog)


async def test_password_change_closes_an_open_token_socket(ann: User, caplog: pytest.LogCaptureFixture) -> None:
    """set_password() + save() closes the sockets opened with older tokens, at once (no session to exempt)."""
    caplog.set_level(logging.INFO, logger="tether.auth")
    async with connect("/ws/auth/me/", headers=bearer(issue_token(ann))) as ws:
        await ws.receive_json()
        ann.set_password("changed")
        await ann.asave()
        assert await ws.wait_closed() == CloseCode.UNAUTHORIZED
    assert f"Closing websocket /ws/auth/me/ for user {ann.pk}: password changed (closed 4401)" in auth_lines(caplog)


async def test_token_issued_after_the_password_change_stays_open(ann: User) -> None:
    """A token issued with the new password connects, and a password revocation naming the credentials
    it already has (as one still on its way would) leaves it open (sentinel echo)."""
    ann.set_password("changed")
    await ann.asave()
    async with connect("/ws/auth/me/", headers=bearer(issue_token(ann))) as ws:
        assert (await ws.receive_json())["user"] == "ann"
        ann._password = "changed"  # type: ignore[attr-defined]  # a save that reports the same new password
        await ann.asave()
        await ws.send_text("still here")
        assert await ws.receive_text() == "still here"


# -- on a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(django_db_setup: None) -> Iterator[Server]:
    with serve("uvicorn-sansio", env={"TETHER_TEST_SQLITE": str(settings.DATABASES["default"]["NAME"])}) as running:
        yield running


async def real_refusal(server: Server, token: str) -> Any:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{server.url}/ws/auth/me/", additional_headers=bearer(token)):
            pass
    return info.value.response


async def test_real_server_bearer_header_and_refusals(server: Server, ann: User) -> None:
    """uvicorn: a websockets client with Authorization: Bearer is ann; tampered, expired and voided
    tokens get HTTP 403 with "4401 invalid token", and the log names each reason but no token."""
    token = issue_token(ann)
    async with websockets.connect(f"{server.url}/ws/auth/me/", additional_headers=bearer(token)) as ws:
        assert json.loads(await ws.recv())["user"] == "ann"
    async with websockets.connect(
        f"{server.url}/ws/auth/me/",
        subprotocols=["tether.v1", f"bearer.{token}"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "tether.v1"
        assert json.loads(await ws.recv()) == {
            "user": "ann",
            "groups": [user_group(ann)],
            "subprotocols": ["tether.v1"],
        }
    for bad in (token[:-2] + "xx", expired_token(ann)):
        response = await real_refusal(server, bad)
        assert (response.status_code, response.body) == (403, b"4401 invalid token\n")
    ann.set_password("changed")
    await ann.asave()
    response = await real_refusal(server, token)
    assert (response.status_code, response.body) == (403, b"4401 invalid token\n")
    for reason in ("bad signature", "expired", "password changed"):
        assert f"invalid token: {reason} (closed 4401)" in server.log
    assert token[:20] not in server.log


async def test_token_wins_over_a_session_cookie(ann: User) -> None:
    """A handshake with both a token and bob's session cookie is the token's user."""
    bob = await User.objects.acreate_user("bob", password="secret")
    cookie = await session_cookie(bob)
    async with connect("/ws/auth/me/", headers={**bearer(issue_token(ann)), "Cookie": cookie}) as ws:
        assert (await ws.receive_json())["user"] == "ann"


async def test_logout_elsewhere_leaves_a_token_socket_open(ann: User) -> None:
    """A token socket has no session: logging out a session of the same user closes only that session's
    sockets (sentinel on the token socket after the session socket closed)."""
    cookie = await session_cookie(ann)
    async with (
        connect("/ws/auth/me/", headers=bearer(issue_token(ann))) as by_token,
        connect("/ws/auth/me/", headers={"Cookie": cookie}) as by_session,
    ):
        await by_token.receive_json()
        await by_session.receive_json()
        client = AsyncClient()
        client.cookies[settings.SESSION_COOKIE_NAME] = cookie.split("=", 1)[1]
        await client.post("/accounts/logout/")
        assert await by_session.wait_closed() == CloseCode.UNAUTHORIZED
        await by_token.send_text("sentinel")
        assert await by_token.receive_text() == "sentinel"


async def test_invalid_token_without_the_http_response_extension_closes_4401(ann: User) -> None:
    """On a server without websocket.http.response the refusal is a close with 4401 (servers answer 403)."""
    with pytest.raises(Rejected) as info:
        async with connect(
            "/ws/auth/me/",
            headers=bearer(expired_token(ann)),
            scope={"extensions": {"tether.testing": {"exceptions": []}}},
        ):
            pass
    assert (info.value.code, info.value.reason) == (CloseCode.UNAUTHORIZED, "invalid token")
