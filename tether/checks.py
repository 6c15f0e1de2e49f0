"""Django system checks for the classic traps, each naming its fix.

=============  ==========================================================  ===========
id             trap                                                        runs
=============  ==========================================================  ===========
tether.E001    uvicorn installed without ``websockets`` or ``wsproto``     ``check``
tether.E002    a local ``websockets`` module shadows the library           ``check``
tether.W003    ``tether`` missing from INSTALLED_APPS                      at startup
tether.W004    the project's ``asgi.py`` does not use tether               ``check``
tether.W005    an unknown key in the ``TETHER`` setting (a typo)           ``check``
tether.W006    ``django.contrib.staticfiles`` listed before ``tether``     ``check``
tether.E030    a malformed ``TETHER["GROUPS"]`` (history settings)         ``check``
tether.W010    the memory backend with DEBUG off                           ``--deploy``
tether.W011    Origin checking disabled                                    ``--deploy``
tether.W014    a bare wildcard among the trusted origins                   ``--deploy``
tether.W020    the server buffers messages larger than MAX_MESSAGE_SIZE    ``check`` (1)
tether.W021    the server sends no keepalive pings (PING_INTERVAL is set)  ``check`` (1)
tether.W022    the server waits for ever at shutdown                       ``check`` (1)
=============  ==========================================================  ===========

(1) W020-W022 compare the server's limits with tether's where tether can tell
what they are: under ``manage.py serve`` and ``runserver`` (which announce
their options, and run the checks) and in a process started from uvicorn's
command line (``uvicorn mysite.asgi:application ...``, whose arguments tether
parses; those warnings are logged at startup, logger ``tether.checks``).
Under gunicorn, daphne, hypercorn or granian tether can't tell, and says nothing.

W003 can't be a registered check: Django only runs checks that installed apps
register, so when ``tether`` is not installed nothing of it would run.
``get_asgi_application()`` logs it at startup instead (logger ``tether.checks``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Sequence
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .conf import DEFAULTS, get_setting
from .positions import parse_groups
from .server import asgi_module_name, running_server_options

__all__ = [
    "check_asgi_module",
    "check_groups",
    "check_installed",
    "check_memory_backend_in_deployment",
    "check_origin_checking",
    "check_runserver_order",
    "check_server_limits",
    "check_settings_keys",
    "check_websocket_server",
    "check_websockets_shadowing",
    "log_server_limits",
    "server_limit_warnings",
]

_find_spec = importlib.util.find_spec  # a module attribute, so tests can make packages disappear

_MEMORY_BACKEND = "tether.backends.memory.MemoryBackend"


@register("tether", Tags.compatibility)
def check_websocket_server(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.E001: uvicorn without a WebSocket library treats every handshake as plain HTTP."""
    if _find_spec("uvicorn") is None or _find_spec("websockets") is not None or _find_spec("wsproto") is not None:
        return []
    return [
        Error(
            "uvicorn is installed but can't speak WebSocket (neither 'websockets' nor 'wsproto' is installed), "
            "so it answers every handshake with 'Unsupported upgrade request'. "
            "Fix: pip install 'uvicorn[standard]'",
            id="tether.E001",
        )
    ]


def _project_dirs() -> list[Path]:
    """Where a project's own modules live: BASE_DIR, the script's directory (sys.path[0]), the cwd."""
    candidates = [getattr(settings, "BASE_DIR", None), sys.path[0] if sys.path else None, Path.cwd()]
    dirs: list[Path] = []
    for candidate in candidates:
        if candidate:
            path = Path(candidate).resolve()
            if path not in dirs:
                dirs.append(path)
    return dirs


@register("tether", Tags.compatibility)
def check_websockets_shadowing(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.E002: a ``websockets.py`` or ``websockets/`` package in the project hides the library."""
    for directory in _project_dirs():
        spec = PathFinder.find_spec("websockets", [str(directory)])
        if spec is not None and spec.has_location and spec.origin:  # a namespace dir can't shadow a package
            return [
                Error(
                    f"{spec.origin} shadows the 'websockets' library that uvicorn and the test clients import. "
                    "Fix: rename your module (and delete its __pycache__).",
                    id="tether.E002",
                )
            ]
    return []


def check_installed() -> list[CheckMessage]:
    """tether.W003: ``tether`` used (its ASGI application built) while not in INSTALLED_APPS."""
    if apps.is_installed("tether"):
        return []
    return [
        Warning(
            "tether is used but 'tether' is not in INSTALLED_APPS, so its system checks, its runserver (which "
            'serves WebSockets) and the {% websocket_url %} tag are missing. Fix: add "tether" to '
            "INSTALLED_APPS (before django.contrib.staticfiles).",
            id="tether.W003",
        )
    ]


@register("tether", Tags.compatibility)
def check_asgi_module(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W004: the project's asgi.py serves Django's own handler, so no websocket reaches tether."""
    name = asgi_module_name()
    if name is None:
        return []
    try:
        spec = _find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.has_location or not spec.origin or not spec.origin.endswith(".py"):
        return []
    try:
        source = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if "tether" in source:
        return []
    return [
        Warning(
            f"{spec.origin} does not use tether, so WebSocket connections never reach your websocket() routes. "
            "Fix: from tether.asgi import get_asgi_application; application = get_asgi_application()",
            id="tether.W004",
        )
    ]


@register("tether")
def check_settings_keys(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W005: a key of ``TETHER`` that tether doesn't read (most likely a typo)."""
    unknown = sorted(set(getattr(settings, "TETHER", {})) - set(DEFAULTS))
    if not unknown:
        return []
    return [
        Warning(
            f"TETHER has unknown key(s) {', '.join(map(repr, unknown))}, which tether ignores. "
            f"Fix: use one of {', '.join(sorted(DEFAULTS))}.",
            id="tether.W005",
        )
    ]


@register("tether")
def check_groups(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.E030: ``TETHER["GROUPS"]`` must parse, or the first broadcast to any group would fail."""
    try:
        parse_groups(get_setting("GROUPS"))
    except ImproperlyConfigured as exc:
        return [Error(f"{exc}. Fix: see the 'Delivery guarantees' page of the docs.", id="tether.E030")]
    return []


@register("tether")
def check_runserver_order(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W006: the first app listed wins ``runserver``; staticfiles' one serves no WebSockets."""
    names = list(settings.INSTALLED_APPS)
    static = "django.contrib.staticfiles"
    tether = next((n for n in names if n == "tether" or n.startswith("tether.apps")), None)
    if static not in names or tether is None or names.index(tether) < names.index(static):
        return []
    return [
        Warning(
            f"{static!r} is listed before 'tether' in INSTALLED_APPS, so 'manage.py runserver' is staticfiles' "
            "and serves no WebSockets. Fix: move 'tether' above it (tether's runserver serves static files too).",
            id="tether.W006",
        )
    ]


@register("tether", Tags.compatibility, deploy=True)
def check_memory_backend_in_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """tether.W010: with the memory backend, broadcasts reach only sockets of the same process."""
    if settings.DEBUG or get_setting("BACKEND") != _MEMORY_BACKEND:
        return []
    return [
        Warning(
            "TETHER['BACKEND'] is the memory backend with DEBUG off: broadcast() reaches only the sockets of its "
            "own process, so with several workers or servers messages are silently lost. Fix: use "
            "tether.backends.redis.RedisBackend or tether.backends.postgres.PostgresBackend (or silence "
            "tether.W010 if you run exactly one process).",
            id="tether.W010",
        )
    ]


@register("tether", Tags.security, deploy=True)
def check_origin_checking(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W011: without the Origin check any web page can open a socket with a user's cookies."""
    if get_setting("CHECK_ORIGIN"):
        return []
    return [
        Warning(
            "TETHER['CHECK_ORIGIN'] is False: any web page can open a WebSocket carrying your users' cookies "
            "(Cross-Site WebSocket Hijacking). Fix: remove the setting, and list extra origins in "
            "TETHER['ALLOWED_ORIGINS'] instead.",
            id="tether.W011",
        )
    ]


@register("tether", Tags.security, deploy=True)
def check_trusted_origins(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W014: a trusted origin of ``"*"`` or ``"https://*"`` lets every site's pages connect."""
    entries = [*getattr(settings, "CSRF_TRUSTED_ORIGINS", []), *get_setting("ALLOWED_ORIGINS")]
    bare = [entry for entry in entries if entry.split("://", 1)[-1].strip("*.") == ""]
    if not bare:
        return []
    return [
        Warning(
            f"{', '.join(repr(entry) for entry in bare)} in CSRF_TRUSTED_ORIGINS / TETHER['ALLOWED_ORIGINS'] "
            "trusts every origin: any web page can open a WebSocket carrying your users' cookies. Fix: list "
            'the origins your pages are served from ("https://app.example.com", "https://*.example.com").',
            id="tether.W014",
        )
    ]


def server_limit_warnings(server: dict[str, Any] | None) -> list[CheckMessage]:
    """tether.W020-W022 for a server running with the uvicorn options ``server`` (None: unknown)."""
    if server is None:
        return []
    messages: list[CheckMessage] = []
    limit = get_setting("MAX_MESSAGE_SIZE")
    buffered = server.get("ws_max_size")
    if limit is not None and isinstance(buffered, int) and buffered > limit:
        messages.append(
            Warning(
                f"The server reads messages of up to {buffered} bytes (uvicorn --ws-max-size) before tether sees "
                f"them, but TETHER['MAX_MESSAGE_SIZE'] is {limit}: each connection can make the server hold "
                f"{buffered // limit}x what tether would accept. Fix: run 'manage.py serve', or pass "
                f"--ws-max-size {limit} to uvicorn.",
                id="tether.W020",
            )
        )
    interval = get_setting("PING_INTERVAL")
    if interval and not server.get("ws_ping_interval", interval):
        messages.append(
            Warning(
                "The server sends no keepalive pings (uvicorn --ws-ping-interval is off), so connections whose "
                "client vanished stay open and proxies drop idle ones. Fix: run 'manage.py serve', or pass "
                f"--ws-ping-interval {interval} to uvicorn.",
                id="tether.W021",
            )
        )
    shutdown = get_setting("SHUTDOWN_TIMEOUT")
    if shutdown is not None and server.get("timeout_graceful_shutdown", shutdown) is None:
        messages.append(
            Warning(
                "The server has no graceful-shutdown timeout (uvicorn --timeout-graceful-shutdown), so a client "
                "that stopped reading holds a restart for ever. Fix: run 'manage.py serve', or pass "
                f"--timeout-graceful-shutdown {shutdown} to uvicorn.",
                id="tether.W022",
            )
        )
    return messages


@register("tether", Tags.compatibility)
def check_server_limits(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """tether.W020-W022: the server's limits are looser than tether's, where tether can tell them."""
    return server_limit_warnings(running_server_options())


def log_server_limits() -> None:
    """Log W020-W022 at startup in a process started from uvicorn's command line (which runs no checks)."""
    if running_server_options() is None:
        return
    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", []))
    for message in check_server_limits():
        if message.id not in silenced:
            logging.getLogger("tether.checks").warning("%s", message)
