"""tether's settings: the ``TETHER`` dict, read in one place, like ``CACHES``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

__all__ = ["DEFAULTS", "get_setting"]

DEFAULTS: dict[str, Any] = {
    "BACKEND": "tether.backends.memory.MemoryBackend",
    "OPTIONS": {},
    "URLCONF": None,  # None: ROOT_URLCONF
    # Outbound messages queued per socket before OVERFLOW applies. A queue holds references to
    # frames shared by all members, so a thousand costs little and absorbs a burst.
    "QUEUE_SIZE": 1000,
    "OVERFLOW": "close",  # or "drop_oldest", "drop_newest" (see tether.hub)
    # Groups that keep a history, by fnmatch pattern: {"chat.*": {"history": 500, "history_ttl": 3600}}
    # keeps each chat group's last 500 messages, none older than an hour (tether.positions). Others are
    # live-only.
    "GROUPS": {},
    # Seconds a process's presence entries outlive its last heartbeat (tether.presence). Each process
    # refreshes its entries every PRESENCE_TTL / 3, so a crashed process's members leave within
    # 4/3 x PRESENCE_TTL of the crash (a clean shutdown removes them at once).
    "PRESENCE_TTL": 30.0,
    # -- Origin check (tether.security) --
    # Refuse handshakes whose Origin matches neither ALLOWED_HOSTS nor CSRF_TRUSTED_ORIGINS:
    # the defence against Cross-Site WebSocket Hijacking. Turn off only behind a proxy that checks it.
    "CHECK_ORIGIN": True,
    # Extra origins allowed to connect, written like CSRF_TRUSTED_ORIGINS ("https://app.example.com",
    # "https://*.example.com").
    "ALLOWED_ORIGINS": [],
    # Handshakes with no Origin header come from non-browser clients (scripts, mobile apps, servers).
    # Only browsers send ambient cookies, and browsers always send Origin, so allowing these is safe.
    "ALLOW_NO_ORIGIN": True,
    # -- Limits (tether.limits), enforced by tether whatever the server's own settings --
    # Largest inbound message in bytes (UTF-8 for text); larger closes with 1009. None: no limit.
    "MAX_MESSAGE_SIZE": 1024 * 1024,
    # Sustained inbound messages per second per connection (token bucket); more closes with 1008.
    # None (the default): no rate limit.
    "MESSAGE_RATE": None,
    # Bucket size of the rate limit: how many messages may arrive at once. None: 2 x MESSAGE_RATE (>= 1).
    "MESSAGE_BURST": None,
    # Seconds without an inbound message before the socket is closed with 4408. None (default): never,
    # since push-only sockets legitimately stay silent for hours.
    "IDLE_TIMEOUT": None,
    # Seconds the application waits for the server's websocket.connect event. None: forever.
    "HANDSHAKE_TIMEOUT": 10.0,
    # -- Auth lifecycle (tether.auth, tether.revocation) --
    # Seconds a token from tether.auth.issue_token() is valid by default. A socket it opened closes
    # with 4401 when it expires (a token socket has no session to outlive it).
    "TOKEN_MAX_AGE": 3600,
    # Seconds between re-checks of each open authenticated socket's login (session still there, same
    # password, user active): the safety net under the instant revocations (logout, password change,
    # deactivation). Costs a session read and a user read per distinct session per period, spread
    # over the period. None: never re-check.
    "SESSION_RECHECK": 300,
    # Seconds a session validated at a handshake (session store and user read) is reused for the next
    # handshakes with the same session cookie, in this process, with the memory backend only (where
    # every logout, password change and deactivation reaches the process as it happens: each drops
    # the entry at once). Bounds what no signal announces: a session row deleted by hand or expiring,
    # QuerySet.update(password=...). None or 0: read the store at every handshake.
    "LOGIN_CACHE": 5.0,
    # -- The server's side of the limits (tether.server): what `manage.py serve` and `runserver` pass to
    # uvicorn; `serve`'s flags override them. MAX_MESSAGE_SIZE above becomes uvicorn's --ws-max-size.
    # Seconds between the server's keepalive pings (--ws-ping-interval). None: no pings, dead peers linger.
    "PING_INTERVAL": 20.0,
    # Seconds a ping may go unanswered before the server closes with 1011 (--ws-ping-timeout).
    "PING_TIMEOUT": 20.0,
    # Seconds the server waits at shutdown for connections to finish (--timeout-graceful-shutdown). A
    # client that stopped reading keeps its connection until this runs out. None: wait for ever.
    "SHUTDOWN_TIMEOUT": 10,
    # -- The realtime protocol (tether.realtime), per connection; breaking one answers the command with an
    # error reply (docs/protocol.md), it never closes the socket.
    # Groups one connection may subscribe to at once ("too_many_subscriptions" past it).
    "MAX_SUBSCRIPTIONS": 100,
    # Sustained commands per second (token bucket; pings don't count): "rate_limited" past it. None: no limit.
    "COMMAND_RATE": 50,
    # Bucket size: commands that may arrive at once (a page resubscribing all its groups after a reconnect:
    # keep it above MAX_SUBSCRIPTIONS). None: 2 x COMMAND_RATE (>= 1).
    "COMMAND_BURST": 200,
    # Largest command in bytes (UTF-8), e.g. a publish's data: "too_large" past it. None: only MAX_MESSAGE_SIZE.
    "MAX_COMMAND_SIZE": 64 * 1024,
}


def get_setting(name: str) -> Any:
    """``settings.TETHER[name]``, falling back to the documented default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown tether setting {name!r}")
    return getattr(settings, "TETHER", {}).get(name, DEFAULTS[name])
