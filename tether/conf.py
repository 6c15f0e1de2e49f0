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
}


def get_setting(name: str) -> Any:
    """``settings.TETHER[name]``, falling back to the documented default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown tether setting {name!r}")
    return getattr(settings, "TETHER", {}).get(name, DEFAULTS[name])
