"""tether's settings: the ``TETHER`` dict, read in one place, like ``CACHES``."""

from __future__ import annotations

from typing import Any

from django.conf import settings

__all__ = ["DEFAULTS", "get_setting"]

DEFAULTS: dict[str, Any] = {
    "BACKEND": "tether.backends.memory.MemoryBackend",
    "OPTIONS": {},
    "URLCONF": None,  # None: ROOT_URLCONF
}


def get_setting(name: str) -> Any:
    """``settings.TETHER[name]``, falling back to the documented default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown tether setting {name!r}")
    return getattr(settings, "TETHER", {}).get(name, DEFAULTS[name])
