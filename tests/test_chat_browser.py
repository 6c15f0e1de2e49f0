"""The chat example in a real browser: Debian's chromium driven by Playwright, two users, one server.

Sync tests on purpose: Playwright's sync API can't run inside an asyncio loop.
The tests share one server and one signed-in page per user, and run in order;
the last two restart the server under the open pages.

A page is one tether.v1 socket (tether.js) showing one or more rooms, each a
``.room[data-room=...]`` pane with its ``.log`` and its ``.compose`` input.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from tests.chat import ChatServer, chat_env, manage, redis_prefix, session_cookie
from tests.conftest import require_program, require_service
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


def open_room(context: BrowserContext, room: str, errors: list[str], sockets: list[str] | None = None) -> Page:
    """A page on ``/rooms/<room>/`` whose socket is open; uncaught page errors go to ``errors``, the
    URL of every WebSocket the page opens to ``sockets``."""
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if sockets is not None:
        page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"/rooms/{room}/")
    expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    return page


def pane(page: Page, room: str = "lobby") -> Locator:
    """The part of the page that shows ``room``."""
    return page.locator(f'#rooms .room[data-room="{room}"]')


def log(page: Page, room: str = "lobby") -> Locator:
    return pane(page, room).locator(".log")


def say(page: Page, text: str, room: str = "lobby") -> None:
    compose = pane(page, room).locator(".compose")
    compose.fill(text)
    compose.press("Enter")


def message(page: Page, text: str, room: str = "lobby") -> Locator:
    return log(page, room).locator("li.message .text", has_text=text)


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
        line = log(page).locator("li.message", has_text="hello bob")
        expect(line).to_have_count(1, timeout=WAIT)
        expect(line.locator(".user")).to_have_text("alice")
        expect(line.locator(".text")).to_have_text("hello bob, <b>not bold</b>")
    assert bob.locator(".log b").count() == 0
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
        mine = log(page).locator("li.message", has_text=own)
        theirs = log(page).locator("li.message", has_text=other)
        expect(mine).to_have_class("message mine")
        expect(theirs).to_have_class("message")
        assert background(mine) not in (background(theirs), "rgba(0, 0, 0, 0)")


def test_joining_shows_the_last_messages(bob_context: BrowserContext, alice: Page, errors: list[str]) -> None:
    """A page opened later shows the room's stored history, oldest first."""
    late = open_room(bob_context, "lobby", errors)
    texts = log(late).locator("li.message .text")
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
        expect(page.locator(".log li.announcement", has_text="maintenance at noon")).to_have_count(1, timeout=WAIT)
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
        announcement = page.locator(".log li.announcement", has_text="maintenance at noon")
        expect(announcement).to_have_count(1, timeout=WAIT)
        expect(announcement.locator(".user")).to_have_text("alice")
    expect(log(alice).locator("li .text")).to_have_text(
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
    expect(elsewhere.locator(".log li", has_text="lunch?")).to_have_count(0)  # the message itself stays in #lobby
    expect(log(bob).locator("li.mentions-me", has_text="lunch?")).to_have_count(1, timeout=WAIT)
    # Sentinel: a mention from #random reaches bob's #lobby page after the #lobby one did.
    alice_random = open_room(alice.context, "random", errors)
    say(alice_random, "@bob or here?", "random")
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


def test_two_rooms_in_one_page_over_one_socket(
    alice: Page, bob_context: BrowserContext, chat: ChatServer, errors: list[str]
) -> None:
    """alice's page shows #lobby and #random (``?also=random``); bob's shows #random, and he adds #lobby
    with the open-room form. Each page has exactly one WebSocket for both rooms; each room's lines land
    in that room's pane only, on both pages; the URL keeps the rooms, and a reload shows both again."""
    alice_sockets: list[str] = []
    bob_sockets: list[str] = []
    both = alice.context.new_page()
    both.on("pageerror", lambda exc: errors.append(str(exc)))
    both.on("websocket", lambda ws: alice_sockets.append(ws.url))
    both.goto("/rooms/lobby/?also=random")
    expect(both.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(both.locator("#rooms .room .name")).to_have_text(["#lobby", "#random"])
    bob_page = open_room(bob_context, "random", errors, bob_sockets)
    bob_page.fill("#open-name", "Lobby")
    bob_page.press("#open-name", "Enter")
    expect(bob_page.locator("#rooms .room .name")).to_have_text(["#random", "#lobby"])
    expect(pane(bob_page, "lobby").locator(".compose")).to_be_enabled()
    expect(bob_page).to_have_url(re.compile(r"/rooms/random/\?also=lobby$"))
    expect(message(bob_page, "hi alice", "lobby")).to_have_count(1, timeout=WAIT)  # the room's history
    say(both, "lobby line over one socket", "lobby")
    say(both, "random line over the same socket", "random")
    for page in (both, bob_page):
        expect(message(page, "lobby line over one socket", "lobby")).to_have_count(1, timeout=WAIT)
        expect(message(page, "random line over the same socket", "random")).to_have_count(1, timeout=WAIT)
        expect(page.locator(".log li", has_text="lobby line over one socket")).to_have_count(1)  # not in #random
        expect(page.locator(".log li", has_text="random line over the same socket")).to_have_count(1)
    say(bob_page, "bob answers in random", "random")
    expect(message(both, "bob answers in random", "random")).to_have_count(1, timeout=WAIT)
    expect(message(alice, "bob answers in random", "lobby")).to_have_count(0)  # alice's #lobby-only page
    socket_url = f"{chat.url}/ws/"
    assert alice_sockets == [socket_url]
    assert bob_sockets == [socket_url]
    screenshot(both, bob_page, name="two-rooms")
    bob_page.reload()
    expect(bob_page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(bob_page.locator("#rooms .room .name")).to_have_text(["#random", "#lobby"])
    expect(message(bob_page, "lobby line over one socket", "lobby")).to_have_count(1, timeout=WAIT)
    expect(message(bob_page, "bob answers in random", "random")).to_have_count(1, timeout=WAIT)
    assert bob_sockets == [socket_url, socket_url]  # one per page load
    both.close()
    bob_page.close()
    assert errors == []


def test_online_list_shows_who_is_here_and_drops_who_leaves(
    alice: Page, bob: Page, browser: Browser, chat: ChatServer, errors: list[str]
) -> None:
    """The online list (presence of ``chat.online``): alice and bob see each other, their own name
    first, each name once; dave appears when he opens the chat and goes when his page closes."""
    expect(alice.locator("#online-list li")).to_have_text(["alice", "bob"], timeout=WAIT)
    expect(bob.locator("#online-list li")).to_have_text(["bob", "alice"], timeout=WAIT)
    dave_context = signed_up(browser, chat, "dave")
    dave = open_room(dave_context, "lobby", errors)
    expect(dave.locator("#online-list li")).to_have_text(["dave", "alice", "bob"], timeout=WAIT)
    for page, own, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        expect(page.locator("#online-list li")).to_have_text([own, other, "dave"], timeout=WAIT)
    second = open_room(dave_context, "random", errors)  # a second page of dave's: still one name
    expect(second.locator("#online-list li")).to_have_text(["dave", "alice", "bob"], timeout=WAIT)
    expect(alice.locator("#online-list li")).to_have_count(3)
    screenshot(dave, name="online")
    dave_context.close()
    for page, own, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        expect(page.locator("#online-list li")).to_have_text([own, other], timeout=WAIT)
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
    assert '"GET /static/tether/tether.js HTTP/1.1" 200' in this_page, this_page
    assert '"GET /static/chat/chat.css HTTP/1.1" 200' in this_page, this_page
    log = chat.log.split(marker)[0]
    assert "StreamingHttpResponse" not in log and "Warning" not in log, log
    assert " 404" not in log and "Not Found" not in log and "favicon.ico" not in log, log
    context.close()
    assert errors == []


def restart_mid_conversation(chat: ChatServer, pages: tuple[Page, ...], count: int = 40) -> None:
    """A third process (tether.client, signed in as eve) says ``count`` numbered lines in #lobby, one
    every 50 ms; the server restarts after the 11th. Each page then shows all of them, in order, once."""
    cookie = session_cookie(chat.env, "eve")
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tests.chat_publisher", chat.http_url, cookie, "lobby", str(count), "0.05"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        expect(message(pages[0], f"restart 10/{count}")).to_have_count(1, timeout=WAIT)  # mid-conversation
        chat.stop()
        chat.start()
        out, err = publisher.communicate(timeout=90)
        assert publisher.returncode == 0, (out, err)
        published = re.fullmatch(rf"published {count} over (\d+) connections", out.strip())
        assert published and int(published[1]) >= 2, (out, err)  # the restart cut it off mid-way
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
    lines = [f"restart {n}/{count}" for n in range(count)]
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT)
        numbered = log(page).locator("li.message .text", has_text=re.compile(rf"^restart \d+/{count}$"))
        expect(numbered).to_have_text(lines, timeout=WAIT)


def test_no_message_lost_when_the_server_restarts_mid_conversation(
    chat: ChatServer, alice: Page, bob: Page, errors: list[str]
) -> None:
    """A server restart while a third process chats: alice's and bob's pages show every line, in
    order, once. On the memory backend the history died with the process: the pages were told
    ``recovered: false`` and merged the room's stored messages back in."""
    restart_mid_conversation(chat, (alice, bob))
    for page in (alice, bob):
        expect(pane(page)).to_have_attribute("data-recovered", "false")
        expect(pane(page)).to_have_attribute("data-loads", "2")  # opening the room, then after the restart
    screenshot(alice, bob, name="restart")
    assert errors == []


def test_history_carries_the_pages_across_a_restart_on_redis(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same restart on Redis, where the rooms' history outlives the server: the pages resubscribe
    from the last line they saw and get what they missed from the history (``recovered: true``, no
    reload from the database), every line in order, once."""
    require_service("Redis", "127.0.0.1", 6379)
    errors: list[str] = []
    with redis_prefix("chat-browser") as prefix:
        env = chat_env(tmp_path_factory.mktemp("chat-redis"), TETHER_BACKEND="redis", REDIS_PREFIX=prefix)
        manage(env, "migrate", "--noinput")
        server = ChatServer(env)
        server.start()
        try:
            contexts = [signed_up(browser, server, name) for name in ("alice", "bob")]
            pages = tuple(open_room(context, "lobby", errors) for context in contexts)
            restart_mid_conversation(server, pages)
            for page in pages:
                expect(pane(page)).to_have_attribute("data-recovered", "true")
                expect(pane(page)).to_have_attribute("data-loads", "1")  # only when the room opened
            screenshot(*pages, name="restart-redis")
            for context in contexts:
                context.close()
        finally:
            server.stop()
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
        expect(pane(page).locator(".compose")).to_be_disabled()
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
