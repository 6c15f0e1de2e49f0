"""The chat example's settings, with the test URLconf that tells which worker serves a socket."""

from chatsite.settings import *  # noqa: F403

ROOT_URLCONF = "tests.chat_urls"
