"""Django signals tether sends.

``user_connected`` and ``user_disconnected`` follow a user's sockets across
the deployment (every process sharing the backend): ``user_connected`` when the
user's first socket opens (no other socket of theirs is open in any process),
``user_disconnected`` when their last one closes, or, after a process crashed,
when its entries expire (``TETHER["PRESENCE_TTL"]``). Receivers get
``user_id`` (the primary key as a string), ``user`` (the user object; None
when sent for a crashed process) and ``socket`` (None likewise). Tracking
costs a backend round trip per authenticated socket, so tether does it only
while a receiver is connected: connect them at startup (``AppConfig.ready``).
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["user_connected", "user_disconnected"]

user_connected = Signal()
"""Sent when a user's first socket in the deployment opens: ``user_id``, ``user``, ``socket``."""

user_disconnected = Signal()
"""Sent when a user's last socket in the deployment closes (or its process's entries expired)."""
