"""``runserver`` that serves WebSockets too, through uvicorn, keeping Django's autoreload.

Without uvicorn (or with uvicorn but no WebSocket library) it falls back to
Django's own server and says what to install.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import CommandParser
from django.core.management.commands.runserver import Command as DjangoRunserver
from django.utils import autoreload

from tether.asgi import TetherASGIHandler
from tether.checks import check_websocket_server
from tether.server import announce_server_options, uvicorn_options

BaseRunserver: type[DjangoRunserver] = DjangoRunserver
if apps.is_installed("django.contrib.staticfiles"):
    from django.contrib.staticfiles.management.commands.runserver import Command as StaticRunserver

    BaseRunserver = StaticRunserver

_INSTALL_HINT = (
    "WebSockets are not served: install an ASGI server with WebSocket support: pip install 'uvicorn[standard]'"
)


def websocket_implementation() -> str | None:
    """The uvicorn WebSocket implementation to use, or None if uvicorn can't serve WebSockets."""
    if importlib.util.find_spec("uvicorn") is None:
        return None
    from uvicorn.config import WS_PROTOCOLS

    if importlib.util.find_spec("websockets") is not None:
        return "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets"
    if importlib.util.find_spec("wsproto") is not None:
        return "wsproto"
    return None


class Command(BaseRunserver):  # type: ignore[valid-type,misc]
    help = "Starts a development web server that serves HTTP and WebSockets (uvicorn), with autoreload."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--ws",
            default=None,
            help="uvicorn's WebSocket implementation (default: websockets-sansio, the fastest).",
        )

    _falling_back = False

    def check(self, *args: Any, **kwargs: Any) -> None:
        """Django's checks; when falling back to Django's server, tether.E001 is the warning already shown."""
        if not self._falling_back:
            super().check(*args, **kwargs)
            return
        silenced = settings.SILENCED_SYSTEM_CHECKS
        settings.SILENCED_SYSTEM_CHECKS = [*silenced, "tether.E001"]
        try:
            super().check(*args, **kwargs)
        finally:
            settings.SILENCED_SYSTEM_CHECKS = silenced

    def inner_run(self, *args: Any, **options: Any) -> None:
        ws = options.get("ws") or websocket_implementation()
        if ws is None:
            # uvicorn missing, or there without websockets/wsproto (tether.E001): serve HTTP all the same.
            self._falling_back = True
            why = "; ".join(str(error.msg) for error in check_websocket_server()) or _INSTALL_HINT
            self.stderr.write(self.style.WARNING(f"{why}\nFalling back to Django's server: HTTP only, no WebSockets."))
            super().inner_run(*args, **options)
            return
        import uvicorn

        autoreload.raise_last_exception()
        limits = uvicorn_options()  # the same server limits as manage.py serve
        announce_server_options({"ws": ws, **limits})
        self.stdout.write("Performing system checks...\n\n")
        self.check(display_num_errors=True)
        self.check_migrations()
        http: Any = None
        if apps.is_installed("django.contrib.staticfiles") and options.get("use_static_handler", True):
            if settings.DEBUG or options.get("insecure_serving"):
                from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
                from django.core.handlers.asgi import ASGIHandler

                http = ASGIStaticFilesHandler(ASGIHandler())
        application = TetherASGIHandler(http)
        addr = f"[{self.addr}]" if self._raw_ipv6 else self.addr
        self.stdout.write(
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting ASGI development server (uvicorn, WebSocket: {ws}) at {self.protocol}://{addr}:{self.port}/\n"
            f"Quit the server with {'CTRL-BREAK' if sys.platform == 'win32' else 'CONTROL-C'}.\n"
        )
        config = uvicorn.Config(
            application, host=self.addr, port=int(self.port), ws=ws, lifespan="on", log_level="info", **limits
        )
        uvicorn.Server(config).run()
