"""Handshake security: the Origin check against Cross-Site WebSocket Hijacking.

A WebSocket handshake carries the browser's cookies but, unlike a form post,
no CSRF token, so any web page could open a socket as the logged-in user.
Browsers always send ``Origin`` on a WebSocket handshake; tether refuses one
that matches neither ``ALLOWED_HOSTS`` nor ``CSRF_TRUSTED_ORIGINS`` (nor
``TETHER["ALLOWED_ORIGINS"]``), using Django's own matching rules. A
handshake with more than one ``Origin`` header is refused too: no browser
sends that, and servers differ on which one the application would see.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from ._types import Scope
from .conf import get_setting
from .websocket import WebSocket

__all__ = ["origin_allowed", "origin_refusal"]

logger = logging.getLogger("tether.security")


def _allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS``, with Django's DEBUG fallback for an empty list."""
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def _matches_trusted(origin: str, scheme: str, netloc: str, trusted: list[str]) -> bool:
    """Match like Django's CSRF middleware: exact ``scheme://host[:port]``, or ``scheme://*.domain``."""
    for entry in trusted:
        entry = entry.lower()
        if "*" in entry:
            parts = urlsplit(entry)
            if parts.scheme == scheme and is_same_domain(netloc, parts.netloc.lstrip("*")):
                return True
        elif entry == origin:
            return True
    return False


def origin_allowed(origin: str, socket_scheme: str = "ws") -> bool:
    """Whether a handshake from ``origin`` ("https://example.com:8443") may connect.

    Allowed when its host matches ``ALLOWED_HOSTS`` (Django's ``validate_host``
    wildcards; over ``wss`` the origin must be ``https``, as Django's CSRF check
    demands for secure requests), or it matches ``CSRF_TRUSTED_ORIGINS`` or
    ``TETHER["ALLOWED_ORIGINS"]`` (exact, or ``https://*.example.com``).
    ``"null"`` (sandboxed frames, ``file:`` pages) is never allowed by host.
    """
    origin = origin.strip().lower()
    try:
        parts = urlsplit(origin)
        netloc = parts.netloc
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    if not parts.scheme or not netloc:
        return False
    trusted = [*getattr(settings, "CSRF_TRUSTED_ORIGINS", []), *get_setting("ALLOWED_ORIGINS")]
    if _matches_trusted(origin, parts.scheme, netloc, trusted):
        return True
    if parts.scheme not in ("http", "https") or (socket_scheme == "wss" and parts.scheme != "https"):
        return False
    domain, _port = split_domain_port(netloc)
    return bool(domain) and validate_host(domain, _allowed_hosts())


def _origin_headers(scope: Scope) -> list[str]:
    """Every ``Origin`` header of the handshake, in order."""
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == b"origin"]


def origin_refusal(socket: WebSocket) -> str | None:
    """Why the handshake's Origin is refused, or None if it may connect (reads settings once)."""
    if not get_setting("CHECK_ORIGIN"):
        return None
    origins = _origin_headers(socket.scope)  # not socket.headers: that copy would live as long as the socket
    if len(origins) > 1 or (origins and "," in origins[0]):
        # Servers disagree on which of several headers the application sees (wsproto: the first), and a
        # proxy may join them with ", ": a browser sends exactly one, so refuse rather than pick one.
        return f"more than one Origin header ({', '.join(map(repr, origins))}); a browser sends exactly one"
    origin = origins[0] if origins else None
    if origin is None:
        return None if get_setting("ALLOW_NO_ORIGIN") else "no Origin header (TETHER['ALLOW_NO_ORIGIN'] is off)"
    if origin_allowed(origin, str(socket.scope.get("scheme", "ws"))):
        return None
    return (
        f"Origin {origin!r} is not allowed (add it to ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS or TETHER['ALLOWED_ORIGINS'])"
    )
