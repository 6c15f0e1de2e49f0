"""Broadcast backends: how one process's publish reaches the other processes' hubs.

Pick one with ``TETHER["BACKEND"]`` (a dotted path) and ``TETHER["OPTIONS"]``.
"""

from .base import Backend, Deliver, Frame, decode_payload, encode_payload, load_backend

__all__ = ["Backend", "Deliver", "Frame", "decode_payload", "encode_payload", "load_backend"]
