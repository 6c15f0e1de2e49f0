"""``manage.py serve``: run the project under uvicorn in production, its limits taken from ``TETHER``.

What daphne is for Channels, configured from settings: uvicorn with
``websockets-sansio``, ``--ws-max-size`` = ``TETHER["MAX_MESSAGE_SIZE"]`` (so a
client can't make the server buffer more than tether would accept),
keepalive pings (``PING_INTERVAL``/``PING_TIMEOUT``), a bounded graceful
shutdown (``SHUTDOWN_TIMEOUT``), worker processes, TCP or a Unix socket, and
proxy headers trusted from ``--forwarded-allow-ips``. Every one has a flag.
Under ``websockets-sansio`` and ``wsproto`` it runs uvicorn's protocol with
reading paused while writes are (``tether.management.backpressure``), so a
client that floods pings and never reads can't grow the server's memory.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tether.server import WEBSOCKET_IMPLEMENTATION, announce_server_options, asgi_application_path, uvicorn_options

_NONE = ("none", "off", "0")

BACKPRESSURE = {
    "websockets-sansio": "tether.management.backpressure:WebSocketsSansIOProtocol",
    "wsproto": "tether.management.backpressure:WSProtocol",
}
"""The implementations whose protocol serve swaps for one that stops reading while writes are paused."""


def _seconds_or_none(value: str) -> float | None:
    """A number of seconds, or None for "none"/"off"/"0" (disabled)."""
    if value.lower() in _NONE:
        return None
    seconds = float(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


class Command(BaseCommand):
    help = (
        "Serves the project (HTTP and WebSockets) with uvicorn for production, the server's limits "
        "matching TETHER's: message size, keepalive pings, graceful shutdown."
    )
    requires_system_checks: list[str] = []  # run in handle(), once the server's options are known

    def add_arguments(self, parser: CommandParser) -> None:
        limits = uvicorn_options()
        parser.add_argument("--app", help="ASGI application, module:attribute (default: from ASGI_APPLICATION).")
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port to bind (default: 8000).")
        parser.add_argument("--uds", help="Bind to this Unix domain socket instead of host and port.")
        parser.add_argument("--workers", type=int, default=1, help="Worker processes (default: 1).")
        parser.add_argument(
            "--ws", default=WEBSOCKET_IMPLEMENTATION, help="uvicorn's WebSocket implementation (default: %(default)s)."
        )
        parser.add_argument(
            "--ws-max-size",
            type=int,
            default=limits["ws_max_size"],
            help="Largest message the server buffers, in bytes (default: TETHER['MAX_MESSAGE_SIZE'], %(default)s).",
        )
        parser.add_argument(
            "--ws-ping-interval",
            type=_seconds_or_none,
            default=limits["ws_ping_interval"],
            help="Seconds between keepalive pings, or 'none' (default: TETHER['PING_INTERVAL'], %(default)s).",
        )
        parser.add_argument(
            "--ws-ping-timeout",
            type=_seconds_or_none,
            default=limits["ws_ping_timeout"],
            help="Seconds a ping may go unanswered, or 'none' (default: TETHER['PING_TIMEOUT'], %(default)s).",
        )
        parser.add_argument(
            "--timeout-graceful-shutdown",
            type=_seconds_or_none,
            default=limits["timeout_graceful_shutdown"],
            help="Seconds to wait for connections at shutdown, or 'none' (default: TETHER['SHUTDOWN_TIMEOUT'], "
            "%(default)s).",
        )
        parser.add_argument(
            "--no-proxy-headers",
            dest="proxy_headers",
            action="store_false",
            help="Ignore X-Forwarded-Proto/-For (default: trust them from --forwarded-allow-ips).",
        )
        parser.add_argument(
            "--forwarded-allow-ips",
            default=None,
            help="Proxies whose X-Forwarded-* headers are trusted (default: $FORWARDED_ALLOW_IPS or 127.0.0.1).",
        )
        parser.add_argument("--log-level", default="info", help="uvicorn's log level (default: info).")

    def server_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The ``uvicorn.run()`` keyword arguments for the parsed ``options``."""
        server: dict[str, Any] = {
            "ws": BACKPRESSURE.get(options["ws"], options["ws"]),
            "ws_max_size": options["ws_max_size"],
            "ws_ping_interval": options["ws_ping_interval"],
            "ws_ping_timeout": options["ws_ping_timeout"],
            "timeout_graceful_shutdown": options["timeout_graceful_shutdown"],
            "workers": options["workers"],
            "proxy_headers": options["proxy_headers"],
            "forwarded_allow_ips": options["forwarded_allow_ips"],
            "lifespan": "on",
            "log_level": options["log_level"],
        }
        if options["uds"]:
            server["uds"] = options["uds"]
        else:
            server["host"], server["port"] = options["host"], options["port"]
        return server

    def handle(self, *args: Any, **options: Any) -> None:
        if importlib.util.find_spec("uvicorn") is None:
            raise CommandError("manage.py serve runs uvicorn, which is not installed: pip install 'uvicorn[standard]'")
        app = options["app"] or asgi_application_path()
        if app is None:
            raise CommandError(
                "no ASGI application: set ASGI_APPLICATION (e.g. 'mysite.asgi.application') or pass --app"
            )
        import uvicorn
        from uvicorn.config import WS_PROTOCOLS

        if options["ws"] not in WS_PROTOCOLS:
            raise CommandError(
                f"uvicorn has no WebSocket implementation {options['ws']!r}; choose one of {sorted(WS_PROTOCOLS)}"
            )
        server = self.server_options(options)
        announce_server_options(server)
        self.check(display_num_errors=False)
        where = server["uds"] if "uds" in server else f"http://{server['host']}:{server['port']}"
        self.stdout.write(
            f"Serving {app} at {where} with uvicorn (WebSocket: {options['ws']}, {server['workers']} worker(s), "
            f"max message {server['ws_max_size']} bytes, pings every {server['ws_ping_interval']}s, "
            f"graceful shutdown {server['timeout_graceful_shutdown']}s)"
        )
        uvicorn.run(app, **server)
