"""The ASGI server's limits, matched to tether's: what ``serve`` and ``runserver`` pass to uvicorn.

tether enforces ``TETHER["MAX_MESSAGE_SIZE"]`` on every message it receives,
but the server reads a whole message before tether sees it, up to its own
limit (uvicorn's ``--ws-max-size``, 16 MiB by default): with the server's
default, 20 clients sending 16 MiB each cost the server ~130 MiB however small
tether's limit. ``uvicorn_options()`` turns tether's settings into the uvicorn
options that close the gap (``--ws-max-size``, the keepalive pings, the
graceful-shutdown timeout); ``running_server_options()`` reads what a server
started from uvicorn's command line was given, for the system checks.

uvicorn is optional: nothing here imports it unless it is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from django.conf import settings

from .conf import get_setting

__all__ = [
    "UVICORN_DEFAULT_WS_MAX_SIZE",
    "WEBSOCKET_IMPLEMENTATION",
    "announce_server_options",
    "asgi_application_path",
    "asgi_module_name",
    "running_server_options",
    "uvicorn_options",
]

WEBSOCKET_IMPLEMENTATION = "websockets-sansio"
"""uvicorn's fastest WebSocket implementation on our measurements (DESIGN.md section 3)."""

UVICORN_DEFAULT_WS_MAX_SIZE = 16 * 1024 * 1024
"""uvicorn's ``--ws-max-size`` when none is given; ``serve`` uses it when MAX_MESSAGE_SIZE is None."""

_announced: dict[str, Any] | None = None


def uvicorn_options() -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for tether's limits, read from ``TETHER`` now.

    ``ws_max_size`` is ``MAX_MESSAGE_SIZE`` (the server then refuses a larger
    message itself, with the same 1009, before buffering more of it),
    ``ws_ping_interval``/``ws_ping_timeout`` are ``PING_INTERVAL``/``PING_TIMEOUT``,
    ``timeout_graceful_shutdown`` is ``SHUTDOWN_TIMEOUT``.
    """
    max_size = get_setting("MAX_MESSAGE_SIZE")
    return {
        "ws_max_size": int(max_size) if max_size is not None else UVICORN_DEFAULT_WS_MAX_SIZE,
        "ws_ping_interval": get_setting("PING_INTERVAL"),
        "ws_ping_timeout": get_setting("PING_TIMEOUT"),
        "timeout_graceful_shutdown": get_setting("SHUTDOWN_TIMEOUT"),
    }


def announce_server_options(options: dict[str, Any]) -> None:
    """Record the options this process starts its server with (``serve``, ``runserver``), for the checks."""
    global _announced
    _announced = dict(options)


def _uvicorn_cli_args() -> list[str] | None:
    """The arguments of this process's command line if it is uvicorn's (``uvicorn ...``, ``python -m uvicorn``)."""
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "uvicorn" or program.endswith(os.path.join("uvicorn", "__main__.py")):
        return sys.argv[1:]
    return None


def running_server_options() -> dict[str, Any] | None:
    """The uvicorn options this process's server runs with, when tether can tell; else None.

    Known when ``serve``/``runserver`` announced them, or when the process is
    uvicorn's command line (parsed with uvicorn's own option definitions, so
    its defaults count). Unknown under gunicorn, daphne, hypercorn, granian.
    """
    if _announced is not None:
        return dict(_announced)
    args = _uvicorn_cli_args()
    if args is None or importlib.util.find_spec("uvicorn") is None:
        return None
    command = importlib.import_module("uvicorn.main").main  # the click command (uvicorn.main is shadowed by it)
    try:
        context = command.make_context("uvicorn", list(args), resilient_parsing=True)
    except Exception:  # an option this uvicorn doesn't know: say nothing rather than guess
        return None
    params: dict[str, Any] = context.params
    return params


def asgi_module_name() -> str | None:
    """The project's ASGI module: ASGI_APPLICATION's, else the ``asgi`` module beside WSGI_APPLICATION's."""
    asgi_application = getattr(settings, "ASGI_APPLICATION", None)
    if asgi_application:
        return str(asgi_application).rpartition(".")[0] or None
    wsgi_application = getattr(settings, "WSGI_APPLICATION", None)
    if not wsgi_application:
        return None
    package = str(wsgi_application).rpartition(".")[0].rpartition(".")[0]
    return f"{package}.asgi" if package else "asgi"


def asgi_application_path() -> str | None:
    """The project's ASGI application as uvicorn's ``module:attribute`` import string, or None."""
    asgi_application = getattr(settings, "ASGI_APPLICATION", None)
    if asgi_application:
        module, _, attribute = str(asgi_application).rpartition(".")
        return f"{module}:{attribute}" if module else None
    name = asgi_module_name()
    return f"{name}:application" if name else None
