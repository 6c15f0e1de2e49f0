"""The chat example in a real browser: Debian's chromium driven by Playwright, two users, one server.

Sync tests on purpose: Playwright's sync API can't run inside an asyncio loop.
The tests share one server and one signed-in page per user, and run in order;
the last one restarts the server under the open pages.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from tests.chat import ChatServer, chat_env, manage
from tests.conftest import require_program
from tests.servers import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "tether-chat-secret-42"
WAIT = 15_000  # ms: the longest any step may take (a reconnect backs off up to a few seconds)


def require_chromium() -> None:
    require_program(CHROMIUM, "apt-get install -y chromium")


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    """The chat example on the embedded defaults (SQLite, memory backend), migrated, served."""
    env = chat_env(tmp_path_factory.mktemp("chat"))
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


def signed_up(browser: Browser, chat: ChatServer, username: str) -> BrowserContext:
    """A browser context (its own cookies) with ``username`` signed up through the sign-up form."""
    context = browser.new_context(base_url=chat.http_url)
    page = context.new_page()
    page.goto("/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("#signup button")
    expect(page.locator("#me")).to_have_text(username)
    page.close()
    return context


def open_room(context: BrowserContext, room: str, errors: list[str]) -> Page:
    """A page on ``/rooms/<room>/`` whose socket is open; uncaught page errors go to ``errors``."""
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/rooms/{room}/")
    expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    return page


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def message(page: Page, text: str) -> Locator:
    return page.locator("#log li.message .text", has_text=text)


def screenshot(*pages: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for number, page in enumerate(pages, 1):
        page.screenshot(path=str(ARTIFACTS / f"chat-{name}-{number}.png"), full_page=True)


@pytest.fixture(scope="module")
def errors() -> list[str]:
    return []


@pytest.fixture(scope="module")
def alice(browser: Browser, chat: ChatServer, errors: list[str]) -> Iterator[Page]:
    context = signed_up(browser, chat, "alice")
    yield open_room(context, "lobby", errors)
    context.close()


@pytest.fixture(scope="module")
def bob_context(browser: Browser, chat: ChatServer) -> Iterator[BrowserContext]:
    context = signed_up(browser, chat, "bob")
    yield context
    context.close()


@pytest.fixture(scope="module")
def bob(bob_context: BrowserContext, errors: list[str]) -> Page:
    return open_room(bob_context, "lobby", errors)


def test_message_typed_in_one_browser_appears_in_the_other(alice: Page, bob: Page, errors: list[str]) -> None:
    """alice types in #lobby; bob's page shows it, attributed to alice, as text (never as HTML)."""
    say(alice, "hello bob, <b>not bold</b>")
    for page in (alice, bob):
        line = page.locator("#log li.message", has_text="hello bob")
        expect(line).to_have_count(1, timeout=WAIT)
        expect(line.locator(".user")).to_have_text("alice")
        expect(line.locator(".text")).to_have_text("hello bob, <b>not bold</b>")
    assert bob.locator("#log b").count() == 0
    say(bob, "hi alice")
    expect(message(alice, "hi alice")).to_have_count(1, timeout=WAIT)
    screenshot(alice, bob, name="message")
    assert errors == []


def test_joining_shows_the_last_messages(bob_context: BrowserContext, alice: Page, errors: list[str]) -> None:
    """A page opened later gets the room's stored history over the socket, oldest first."""
    late = open_room(bob_context, "lobby", errors)
    texts = late.locator("#log li.message .text")
    expect(texts).to_have_text(["hello bob, <b>not bold</b>", "hi alice"], timeout=WAIT)
    late.close()


def test_announce_form_reaches_every_room(
    alice: Page, bob: Page, bob_context: BrowserContext, errors: list[str]
) -> None:
    """The sync announce view's broadcast_sync shows up on every open room page, in every room."""
    elsewhere = open_room(bob_context, "random", errors)
    form = alice.context.new_page()
    form.goto("/announce/")
    form.fill("#id_text", "maintenance at noon")
    form.click("#announce button")
    expect(form.locator(".flash")).to_contain_text("Announced to all rooms", timeout=WAIT)
    for page in (alice, bob, elsewhere):
        expect(page.locator("#log li.announcement", has_text="maintenance at noon")).to_have_count(1, timeout=WAIT)
    screenshot(form, elsewhere, name="announce")
    form.close()
    elsewhere.close()


def test_mention_notifies_the_user_in_every_room(
    alice: Page, bob: Page, bob_context: BrowserContext, errors: list[str]
) -> None:
    """``@bob`` in #lobby notifies bob's sockets through user_group, also his page in another room."""
    elsewhere = open_room(bob_context, "random", errors)
    say(alice, "@bob lunch?")
    for page in (bob, elsewhere):
        notice = page.locator("#notices .mention", has_text="lunch?")
        expect(notice).to_have_count(1, timeout=WAIT)
        expect(notice).to_contain_text("alice mentioned you in #lobby")
    expect(message(elsewhere, "lunch?")).to_have_count(0)  # the message itself stays in #lobby
    expect(alice.locator("#notices .mention")).to_have_count(0)
    screenshot(bob, elsewhere, name="mention")
    elsewhere.close()
    assert errors == []


def test_pages_reconnect_after_server_restart(
    browser: Browser, chat: ChatServer, alice: Page, bob: Page, errors: list[str]
) -> None:
    """After the server process restarts on the same port, both pages reconnect by themselves and
    chat again; a page whose session ended meanwhile stops retrying and says so.
    """
    carol_context = signed_up(browser, chat, "carol")
    carol = open_room(carol_context, "lobby", errors)
    (session,) = [c["value"] for c in carol_context.cookies() if c["name"] == "sessionid"]
    chat.stop()
    for page in (alice, bob, carol):
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT)
        expect(page.locator("#text")).to_be_disabled()
    manage(  # carol's session ends while no server runs: no socket to close, her reconnect is refused
        chat.env,
        "shell",
        "-c",
        f"from django.contrib.sessions.models import Session; Session.objects.filter(session_key={session!r}).delete()",
    )
    chat.start()
    for page in (alice, bob):
        expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(carol.locator("#state")).to_have_attribute("data-state", "closed", timeout=WAIT)
    expect(carol.locator("#state")).to_contain_text("signed out")
    say(bob, "back after the restart")
    expect(message(alice, "back after the restart")).to_have_count(1, timeout=WAIT)
    expect(message(alice, "hi alice")).to_have_count(1)  # the history sent again is not shown twice
    screenshot(alice, bob, carol, name="reconnected")
    carol_context.close()
    assert errors == []
