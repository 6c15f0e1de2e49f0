"""Handshake security: the Origin check against Cross-Site WebSocket Hijacking.

A WebSocket handshake carries the browser's cookies but, unlike a form post,
no CSRF token, so any web page could open a socket as the logged-in user.
Browsers always send ``Origin`` on a WebSocket handshake; tether checks it
the way Django's CSRF middleware checks a form post's: it passes if it is the
handshake's own ``scheme://host[:port]`` (the host validated against
``ALLOWED_HOSTS``), or is listed in ``CSRF_TRUSTED_ORIGINS`` or
``TETHER["ALLOWED_ORIGINS"]`` (exact, or ``https://*.example.com``).
``ALLOWED_HOSTS`` alone trusts no other origin, so ``ALLOWED_HOSTS = ["*"]``
does not let ``https://evil.example`` in. A handshake with more than one
``Origin`` header is refused too: no browser sends that, and servers differ
on which one the application would see.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from ._types import Scope
from .conf import get_setting
from .websocket import WebSocket, scope_header

__all__ = ["handshake_origin", "origin_allowed", "origin_refusal", "trusted_origins"]

logger = logging.getLogger("tether.security")


def _allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS``, with Django's DEBUG fallback for an empty list."""
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def trusted_origins() -> list[str]:
    """``CSRF_TRUSTED_ORIGINS`` and ``TETHER["ALLOWED_ORIGINS"]``, lower-cased."""
    return [
        entry.lower() for entry in (*getattr(settings, "CSRF_TRUSTED_ORIGINS", []), *get_setting("ALLOWED_ORIGINS"))
    ]


class _Rules:
    """What the Origin check reads from the settings, read once (until a setting changes).

    Django's CSRF middleware likewise reads ``CSRF_TRUSTED_ORIGINS`` once per
    process; ``override_settings`` (tests) rebuilds this through ``setting_changed``.
    """

    __slots__ = ("allow_no_origin", "allowed_hosts", "check", "exact", "forwarded_host", "proxy_header", "wildcards")

    def __init__(self) -> None:
        self.check = bool(get_setting("CHECK_ORIGIN"))
        self.allow_no_origin = bool(get_setting("ALLOW_NO_ORIGIN"))
        self.allowed_hosts = _allowed_hosts()
        self.forwarded_host = bool(getattr(settings, "USE_X_FORWARDED_HOST", False))
        self.proxy_header: tuple[bytes, str] | None = None
        proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        if proxy_header:
            name, secure_value = proxy_header
            meta = name.lower().removeprefix("http_").replace("_", "-")
            self.proxy_header = (meta.encode("latin-1"), secure_value)
        trusted = trusted_origins()
        self.exact = frozenset(entry for entry in trusted if "*" not in entry)
        self.wildcards: list[tuple[str, str]] = []  # (scheme, ".example.com") of each https://*.example.com
        for entry in trusted:
            if "*" in entry:
                parts = urlsplit(entry)
                self.wildcards.append((parts.scheme, parts.netloc.lstrip("*")))


_rules: _Rules | None = None
_WATCHED = frozenset(
    {
        "TETHER",
        "ALLOWED_HOSTS",
        "DEBUG",
        "CSRF_TRUSTED_ORIGINS",
        "USE_X_FORWARDED_HOST",
        "SECURE_PROXY_SSL_HEADER",
    }
)


def _current_rules() -> _Rules:
    global _rules
    rules = _rules
    if rules is None:
        _own_origin.cache_clear()
        rules = _rules = _Rules()
    return rules


def _forget_rules(*, setting: str, **kwargs: Any) -> None:
    global _rules
    if setting in _WATCHED:
        _rules = None
        _own_origin.cache_clear()


setting_changed.connect(_forget_rules)


def _is_secure(scope: Scope, rules: _Rules) -> bool:
    """Whether the handshake came over TLS: ``wss``, or ``SECURE_PROXY_SSL_HEADER`` says so, as in Django."""
    if scope.get("scheme") in ("wss", "https"):
        return True
    if rules.proxy_header is not None:
        meta, secure_value = rules.proxy_header
        value = scope_header(scope, meta)
        return value is not None and value.split(",")[0].strip() == secure_value
    return False


@functools.lru_cache(maxsize=256)
def _own_origin(host: str, secure: bool) -> str | None:
    """``http(s)://host`` if ``host``'s domain is in ``ALLOWED_HOSTS``, else None (cleared with the rules)."""
    host = host.lower()
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, _current_rules().allowed_hosts):
        return None
    return f"{'https' if secure else 'http'}://{host}"


def handshake_origin(scope: Scope) -> str | None:
    """The handshake's own origin, ``http(s)://host[:port]``, as Django's CSRF check computes it
    (``request.get_host()``: ``X-Forwarded-Host`` under ``USE_X_FORWARDED_HOST``, else ``Host``),
    or None when that host is not in ``ALLOWED_HOSTS``."""
    rules = _current_rules()
    host = None
    if rules.forwarded_host:
        forwarded = scope_header(scope, b"x-forwarded-host")
        host = forwarded.split(",")[0].strip() if forwarded else None
    if not host:
        host = scope_header(scope, b"host")
    if not host:
        server = scope.get("server")
        if not server or not server[0]:
            return None
        host = f"{server[0]}:{server[1]}" if server[1] not in (80, 443, None) else str(server[0])
    return _own_origin(host, _is_secure(scope, rules))


def origin_allowed(origin: str, own_origin: str | None = None) -> bool:
    """Whether a handshake from ``origin`` ("https://example.com:8443") may connect.

    It may if it equals ``own_origin`` (the handshake's own, see
    ``handshake_origin``), or matches ``CSRF_TRUSTED_ORIGINS`` or
    ``TETHER["ALLOWED_ORIGINS"]``: exactly, or by an ``https://*.example.com``
    entry for that scheme. Nothing else does: not ``ALLOWED_HOSTS`` alone,
    not ``"null"`` (sandboxed frames, ``file:`` pages).
    """
    origin = origin.strip().lower()
    if own_origin is not None and origin == own_origin.lower():
        return True
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    if not parts.scheme or not parts.netloc:
        return False
    rules = _current_rules()
    if origin in rules.exact:
        return True
    return any(scheme == parts.scheme and is_same_domain(parts.netloc, domain) for scheme, domain in rules.wildcards)


def _origin_headers(scope: Scope) -> list[str]:
    """Every ``Origin`` header of the handshake, in order."""
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == b"origin"]


def origin_refusal(socket: WebSocket) -> str | None:
    """Why the handshake's Origin is refused, or None if it may connect."""
    rules = _current_rules()
    if not rules.check:
        return None
    origins = _origin_headers(socket.scope)  # not socket.headers: that copy would live as long as the socket
    if len(origins) > 1 or (origins and "," in origins[0]):
        # Servers disagree on which of several headers the application sees (wsproto: the first), and a
        # proxy may join them with ", ": a browser sends exactly one, so refuse rather than pick one.
        return f"more than one Origin header ({', '.join(map(repr, origins))}); a browser sends exactly one"
    origin = origins[0] if origins else None
    if origin is None:
        return None if rules.allow_no_origin else "no Origin header (TETHER['ALLOW_NO_ORIGIN'] is off)"
    own = handshake_origin(socket.scope)
    if origin_allowed(origin, own):
        return None
    return (
        f"Origin {origin!r} is not allowed: it is not the handshake's own ({own or 'host not in ALLOWED_HOSTS'}) "
        "nor in CSRF_TRUSTED_ORIGINS or TETHER['ALLOWED_ORIGINS']"
    )
