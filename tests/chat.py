"""The chat example (examples/chat) as a server process for end-to-end tests.

``chat_env(directory)`` is the environment that runs it on its own SQLite file
in ``directory``; ``manage()`` runs its ``manage.py``; ``ChatServer`` serves it
under uvicorn and can be stopped and started again on the same port, as a
deploy or a crash would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.servers import ROOT, Server, free_port, serve

CHAT_DIR = ROOT / "examples" / "chat"
APP = "chatsite.asgi:application"


def chat_env(directory: Path, settings: str = "chatsite.settings", **extra: str) -> dict[str, str]:
    """The environment of a chat process whose database is ``directory/chat.sqlite3``."""
    return {
        "DJANGO_SETTINGS_MODULE": settings,
        "PYTHONPATH": os.pathsep.join([str(CHAT_DIR), str(ROOT)]),
        "DATABASE_URL": f"sqlite:///{directory / 'chat.sqlite3'}",
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> str:
    """Run the chat's ``manage.py`` with ``args``; returns its output, raises with it on failure."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=CHAT_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


_LOGIN = """
from django.contrib.auth import get_user_model
from django.test import Client
user, _ = get_user_model().objects.get_or_create(username={username!r})
client = Client()
client.force_login(user)
print(client.cookies["sessionid"].value)
"""


def session_cookie(env: dict[str, str], username: str) -> str:
    """Create ``username`` if needed and log it in; returns the ``sessionid`` cookie value."""
    return manage(env, "shell", "-v", "0", "-c", _LOGIN.format(username=username)).strip().splitlines()[-1]


class ChatServer:
    """The chat under uvicorn (websockets-sansio) on a fixed port, restartable."""

    def __init__(self, env: dict[str, str], extra_args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.extra_args = extra_args
        self.port = free_port()
        self._stack: contextlib.ExitStack | None = None
        self.server: Server | None = None
        self.logs: list[str] = []  # of the processes already stopped

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        current = self.server.log if self.server is not None else ""
        return "\n".join([*self.logs, current])

    def start(self) -> None:
        """Start serving on ``self.port``; returns once the port accepts connections."""
        assert self._stack is None, "already running"
        stack = contextlib.ExitStack()
        self.server = stack.enter_context(
            serve("uvicorn-sansio", APP, env=self.env, port=self.port, cwd=CHAT_DIR, extra_args=self.extra_args)
        )
        self._stack = stack

    def stop(self) -> None:
        """Stop the process (SIGTERM, as systemd would); idempotent."""
        if self._stack is None:
            return
        assert self.server is not None
        self.logs.append(self.server.log)
        self._stack.close()
        self._stack, self.server = None, None


@contextlib.contextmanager
def redis_prefix(name: str) -> Iterator[str]:
    """A Redis key prefix of this process's own (``REDIS_PREFIX`` for the chat), its keys (the rooms'
    histories, presence) deleted afterwards from the shared Redis; nothing else is touched."""
    prefix = f"tether-test-{name}-{os.getpid()}:"
    try:
        yield prefix
    finally:
        client = redis.Redis(host="127.0.0.1", port=6379)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
