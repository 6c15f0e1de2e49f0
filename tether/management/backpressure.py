"""uvicorn's sans-I/O WebSocket protocols, reading nothing from a client while writes to it are paused.

uvicorn's ``websockets-sansio`` and ``wsproto`` implementations answer each
ping with a pong written straight to the transport, and keep reading while the
transport's buffer is over its high-water mark. A client that sends pings and
never reads makes the server buffer every pong: +176 MiB in 5 s from one
connection under ``websockets-sansio``, +109 MiB under ``wsproto`` (measured;
uvicorn's ``websockets`` implementation awaits the drain, and holds). These
subclasses stop reading from the transport while its writes are paused, as a
TCP proxy does, so such a client fills its own kernel buffers and nothing
more. ``manage.py serve`` runs them (``uvicorn --ws`` takes an import string).

A client that reads slowly is slowed down in what it sends, which is ordinary
TCP back-pressure. Imported only by uvicorn (this module imports it).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SansIO
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol as _WSProto

__all__ = ["WSProtocol", "WebSocketsSansIOProtocol"]


class _ReadOnlyWhenWritable:
    """Pause reading when the transport pauses writing (or data arrives while it is paused); resume with it.

    Relies on uvicorn's protocol attributes: ``transport``, ``writable`` (an
    ``asyncio.Event`` cleared while writes are paused) and ``read_paused``
    (uvicorn's own pause while its application queue is full).
    """

    transport: asyncio.Transport
    writable: asyncio.Event
    read_paused: bool
    _held = False

    def _hold_reading(self) -> None:
        if not self.transport.is_closing():
            self._held = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._hold_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if not self.writable.is_set():  # uvicorn resumed reading for its application meanwhile
            self._hold_reading()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self._held:
            self._held = False
            if not self.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()


class WebSocketsSansIOProtocol(_ReadOnlyWhenWritable, _SansIO):
    """uvicorn's ``websockets-sansio``, with reading paused while writes are."""


class WSProtocol(_ReadOnlyWhenWritable, _WSProto):
    """uvicorn's ``wsproto``, with reading paused while writes are."""
