"""Make docs/img/chat.png, the README's picture of the chat example: bob's page with #lobby and #ops.

Run with the test virtualenv: ``.venv/bin/python scripts/chat_screenshot.py`` (needs Debian's
chromium). It serves the chat on a fresh SQLite file, signs up alice and bob, and has them chat.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chat import ChatServer, chat_env, manage
from tests.test_chat_browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, WAIT, log, open_room, pane, say

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "chat.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        env = chat_env(Path(directory))
        manage(env, "migrate", "--noinput")
        server = ChatServer(env)
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pages = {}
                errors: list[str] = []
                for user in ("alice", "bob"):
                    context = browser.new_context(
                        base_url=server.http_url, viewport={"width": 1000, "height": 600}, device_scale_factor=2
                    )
                    page = context.new_page()
                    page.goto("/signup/")
                    page.fill("#id_username", user)
                    page.fill("#id_password1", PASSWORD)
                    page.fill("#id_password2", PASSWORD)
                    page.click("#signup button")
                    pages[user] = open_room(context, "lobby", errors)
                alice, bob = pages["alice"], pages["bob"]
                bob.fill("#open-name", "ops")  # a second room on bob's page, over the same socket
                bob.press("#open-name", "Enter")
                expect(pane(bob, "ops").locator(".compose")).to_be_enabled(timeout=WAIT)
                say(alice, "hi bob! the deploy went out, sockets reconnected by themselves")
                say(bob, "nice, I didn't even notice")
                form = alice.context.new_page()
                form.goto("/announce/")
                form.fill("#id_text", "maintenance window tonight at 22:00 UTC")
                form.click("#announce button")
                say(alice, "@bob can you check the Redis graphs later?")
                say(bob, "sure, after lunch")
                ops = open_room(alice.context, "ops", errors)
                say(ops, "@bob the alert is back, see the graphs", "ops")
                say(bob, "on it", "ops")
                support = open_room(alice.context, "support", errors)
                say(support, "@bob a customer asks about the outage", "support")
                expect(bob.locator("#notices .mention")).to_have_count(1, timeout=WAIT)  # #support: not open here
                expect(log(bob).locator("li")).to_have_count(5, timeout=WAIT)
                expect(log(bob, "ops").locator("li")).to_have_count(3, timeout=WAIT)
                expect(bob.locator("#online-list li")).to_have_text(["bob", "alice"], timeout=WAIT)
                bob.locator("#rooms").evaluate(
                    "el => el.querySelectorAll('.log').forEach(l => l.style.height = '15rem')"
                )
                OUT.parent.mkdir(parents=True, exist_ok=True)
                bob.locator("body").screenshot(path=str(OUT))
                browser.close()
                assert errors == [], errors
        finally:
            server.stop()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
