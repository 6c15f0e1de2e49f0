"""The chat example in a real browser: Debian's chromium driven by Playwright, two users, one server.

Sync tests on purpose: Playwright's sync API can't run inside an asyncio loop.
The tests share one server and one signed-in page per user, and run in order;
the last one restarts the server under the open pages.
"""

from __future__ import annotations

import time
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


def background(locator: Locator) -> str:
    return str(locator.evaluate("el => getComputedStyle(el).backgroundColor"))


def test_own_messages_stand_out(alice: Page, bob: Page) -> None:
    """A user's own lines carry the ``mine`` class, and that class is styled: their background
    differs from the other user's lines (and from no background at all)."""
    for page, own, other in ((alice, "hello bob", "hi alice"), (bob, "hi alice", "hello bob")):
        mine = page.locator("#log li.message", has_text=own)
        theirs = page.locator("#log li.message", has_text=other)
        expect(mine).to_have_class("message mine")
        expect(theirs).to_have_class("message")
        assert background(mine) not in (background(theirs), "rgba(0, 0, 0, 0)")


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


def test_announcements_survive_a_reload(alice: Page, bob_context: BrowserContext, errors: list[str]) -> None:
    """An announcement is stored: reloading a room page, or opening a room that had no page open
    when it was sent, shows it in the history, after the messages sent before it."""
    alice.reload()
    expect(alice.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    later = open_room(bob_context, "opened-later", errors)
    for page in (alice, later):
        announcement = page.locator("#log li.announcement", has_text="maintenance at noon")
        expect(announcement).to_have_count(1, timeout=WAIT)
        expect(announcement.locator(".user")).to_have_text("alice")
    expect(alice.locator("#log li .text")).to_have_text(
        ["hello bob, <b>not bold</b>", "hi alice", "maintenance at noon"], timeout=WAIT
    )
    later.close()
    home = alice.context.new_page()  # the stored announcement is no room of its own
    home.goto("/")
    expect(home.locator("main li a")).to_have_text(["#lobby"])  # the rooms with messages
    home.close()
    assert errors == []


def test_mention_notifies_the_user_in_every_other_room(
    alice: Page, bob: Page, bob_context: BrowserContext, errors: list[str]
) -> None:
    """``@bob`` in #lobby shows a banner on bob's page in another room (through user_group) and
    highlights the message on his #lobby page, which gets no banner; the banner's button dismisses it.
    """
    elsewhere = open_room(bob_context, "random", errors)
    say(alice, "@bob lunch?")
    notice = elsewhere.locator("#notices .mention", has_text="lunch?")
    expect(notice).to_have_count(1, timeout=WAIT)
    expect(notice).to_contain_text("alice mentioned you in #lobby")
    expect(message(elsewhere, "lunch?")).to_have_count(0)  # the message itself stays in #lobby
    expect(bob.locator("#log li.mentions-me", has_text="lunch?")).to_have_count(1, timeout=WAIT)
    # Sentinel: a mention from #random reaches bob's #lobby page after the #lobby one did.
    alice_random = open_room(alice.context, "random", errors)
    say(alice_random, "@bob or here?")
    expect(bob.locator("#notices .mention", has_text="or here?")).to_have_count(1, timeout=WAIT)
    expect(bob.locator("#notices .mention")).to_have_count(1)  # ... and is the only banner there
    expect(alice.locator("#notices .mention")).to_have_count(0)
    screenshot(bob, elsewhere, name="mention")
    elsewhere.locator("#notices .mention", has_text="lunch?").get_by_role("button", name="dismiss").click()
    expect(elsewhere.locator("#notices .mention", has_text="lunch?")).to_have_count(0)
    bob.locator("#notices .mention .dismiss").click()
    expect(bob.locator("#notices .mention")).to_have_count(0)
    alice_random.close()
    elsewhere.close()
    assert errors == []


# The header's words that run over two lines or sit on another line than the first link's.
WRAPPED = """header => {
  const first = header.querySelector("a").getBoundingClientRect();
  const walker = document.createTreeWalker(header, NodeFilter.SHOW_TEXT);
  const wrapped = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter(r => r.width > 0);
    const lines = new Set(rects.map(r => Math.round(r.top)));
    if (lines.size > 1 || rects.some(r => r.top >= first.bottom || r.bottom <= first.top)) {
      wrapped.push(node.textContent.trim());
    }
  }
  return wrapped;
}"""


def test_header_stays_on_one_line_on_a_phone(alice: Page) -> None:
    """On a 390 px wide screen the header's links, the user name and the log-out button each
    stay on one line, all on the same line, and nothing scrolls sideways."""
    page = alice.context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/", "/rooms/a-rather-long-room-name/", "/announce/"):
        page.goto(path)
        assert page.locator("header").evaluate(WRAPPED) == [], path
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        expect(page.locator("header #me")).to_be_visible()
        expect(page.locator("header button")).to_be_in_viewport(ratio=1)
    screenshot(page, name="phone")
    page.close()


def test_page_load_logs_no_warning_and_no_404(
    browser: Browser, chat: ChatServer, alice: Page, errors: list[str]
) -> None:
    """Loading a room page with an empty cache (HTML, CSS, JavaScript, icon, socket) logs no
    warning and no 404, nor did any page before it since the server started: no
    ``StreamingHttpResponse must consume synchronous iterators`` (Python prints a warning once
    per process), no ``/favicon.ico``."""
    context = browser.new_context(base_url=chat.http_url, storage_state=alice.context.storage_state())
    before = len(chat.log)
    page = open_room(context, "lobby", errors)
    # The icon a browser asks for: the page's <link rel=icon>, or /favicon.ico when it has none.
    icon = page.evaluate("(document.querySelector('link[rel=icon]') || {href: '/favicon.ico'}).href")
    page.request.get(icon)
    sentinel = "/sentinel-end-of-page-load/"
    assert page.request.get(sentinel).status == 404
    marker = f"Not Found: {sentinel}"  # Django's log line for the sentinel request
    deadline = time.monotonic() + WAIT / 1000
    while marker not in chat.log[before:]:  # the server has logged everything the page asked for
        assert time.monotonic() < deadline, chat.log[before:]
        time.sleep(0.05)
    this_page = chat.log[before:].split(marker)[0]
    assert '"GET /static/chat/chat.js HTTP/1.1" 200' in this_page, this_page
    assert '"GET /static/chat/chat.css HTTP/1.1" 200' in this_page, this_page
    log = chat.log.split(marker)[0]
    assert "StreamingHttpResponse" not in log and "Warning" not in log, log
    assert " 404" not in log and "Not Found" not in log and "favicon.ico" not in log, log
    context.close()
    assert errors == []


def test_pages_reconnect_after_server_restart(
    browser: Browser, chat: ChatServer, alice: Page, bob: Page, errors: list[str]
) -> None:
    """After the server process restarts on the same port, both pages reconnect by themselves and
    chat again; a page whose user logged out meanwhile stops retrying and says so.
    """
    carol_context = signed_up(browser, chat, "carol")
    carol = open_room(carol_context, "lobby", errors)
    logout = carol_context.new_page()
    logout.goto("/")
    logout.click("header form button")  # logs out; carol's open socket stays open until it closes
    expect(logout.locator("#login")).to_be_visible()
    chat.stop()
    for page in (alice, bob, carol):
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT)
        expect(page.locator("#text")).to_be_disabled()
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
