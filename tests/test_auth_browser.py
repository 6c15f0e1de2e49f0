"""The chat example's auth lifecycle in a real browser: a token offered as a subprotocol, a logout in
one tab closing the other tab's socket. Debian's chromium driven by Playwright (sync API)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.chat import ChatServer, chat_env, manage
from tests.test_chat_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT,
    log,
    open_room,
    pane,
    require_chromium,
    say,
    signed_up,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    env = chat_env(tmp_path_factory.mktemp("chat-auth"))
    manage(env, "migrate", "--noinput")
    server = ChatServer(env)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_token_page_connects_with_the_subprotocol_form(browser: Browser, chat: ChatServer) -> None:
    """/rooms/lobby/?auth=token fetches a token and offers ["tether.v1", "bearer.<token>"]: the socket
    opens signed in (the server selected tether.v1) and chats; the token is in no log line."""
    errors: list[str] = []
    context = signed_up(browser, chat, "tina")
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with page.expect_response("**/tether/token/") as token:  # the token the socket offers
        page.goto("/rooms/lobby/?auth=token")
    assert token.value.status == 200
    state = page.locator("#state")
    expect(state).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(state).to_have_attribute("data-protocol", "tether.v1")
    say(page, "signed in by token")
    expect(log(page).locator("li.message", has_text="signed in by token").locator(".user")).to_have_text(
        "tina", timeout=WAIT
    )
    assert "bearer." not in chat.log
    context.close()
    assert errors == []


def test_logout_in_one_tab_closes_the_other_tabs_socket_and_says_why(browser: Browser, chat: ChatServer) -> None:
    """Logging out in one tab closes the room tab's socket at once (4401); the page says to sign in again."""
    errors: list[str] = []
    context = signed_up(browser, chat, "lena")
    room = open_room(context, "lobby", errors)
    other = context.new_page()
    other.goto("/")
    other.click("header form button")
    expect(other.locator("#login")).to_be_visible()
    state = room.locator("#state")
    expect(state).to_have_attribute("data-state", "closed", timeout=WAIT)
    expect(state).to_have_text("closed · signed out: sign in again")
    expect(pane(room).locator(".compose")).to_be_disabled()
    assert "logged out (closed 4401)" in chat.log
    context.close()
    assert errors == []
