"""``manage.py tether_broadcast <group> <message>``: send a message to a group from the command line."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from tether.backends.memory import MemoryBackend
from tether.conf import get_setting
from tether.exceptions import BackendUnavailable, InvalidGroup
from tether.publish import MEMORY_BACKEND_HINT, broadcast_sync


class Command(BaseCommand):
    help = (
        "Broadcast a message to every socket in GROUP, in every process (needs the Redis or PostgreSQL "
        "backend: with the memory backend it fails, since nothing outside this process could receive). A MESSAGE that parses as a JSON "
        "object or array is sent as a JSON text frame; anything else as plain text (or force it with --text)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("group", help='the group, e.g. "chat.lobby" or "user.42"')
        parser.add_argument("message", help="a JSON object/array, or text")
        parser.add_argument("--text", action="store_true", help="send MESSAGE as text even if it is JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        group: str = options["group"]
        message: Any = options["message"]
        kind = "text"
        if not options["text"]:
            try:
                decoded = json.loads(message)
            except ValueError:
                decoded = None
            if isinstance(decoded, (dict, list)):
                message, kind = decoded, "JSON"
        backend = import_string(get_setting("BACKEND"))
        if isinstance(backend, type) and issubclass(backend, MemoryBackend):
            # A command runs in its own process: with the memory backend no server's socket can receive.
            raise CommandError(f"Nothing sent: tether_broadcast {MEMORY_BACKEND_HINT}.")
        try:
            broadcast_sync(group, message)
        except (InvalidGroup, BackendUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Broadcast {kind} message to {group}")
