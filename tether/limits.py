"""Per-connection limits on inbound traffic: message size, message rate, idle time.

tether enforces them itself, so they hold whatever the server's own settings
(uvicorn's ``--ws-max-size`` is 16 MiB). Settings are read once per
connection. The size limit is checked in ``WebSocket.receive()`` (a length
comparison per message); rate and idle time wrap the ASGI ``receive``, and a
connection with neither gets the server's ``receive`` untouched. A violation closes the socket with its code,
logs one line, and the handler sees ``Disconnected(code)`` as if the client had
left, so no handler code is needed.

====================  =========  ===================================
setting               close      log (logger ``tether.limits``)
====================  =========  ===================================
MAX_MESSAGE_SIZE      1009       WARNING "... message of N bytes ..."
MESSAGE_RATE/BURST    1008       WARNING "... message rate ..."
IDLE_TIMEOUT          4408       INFO "... idle for N s ..."
====================  =========  ===================================
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from django.utils.encoding import escape_uri_path

from ._types import Message, Receive
from .auth import user_id
from .codes import CloseCode
from .conf import get_setting
from .websocket import ConnectionState, WebSocket

__all__ = ["LimitedReceive", "limit_receive", "violate"]

logger = logging.getLogger("tether.limits")


class LimitedReceive:
    """An ASGI ``receive`` that enforces the rate and idle limits; set ``socket`` before the first call."""

    def __init__(self, receive: Receive, rate: float | None, burst: float | None, idle: float | None) -> None:
        self.socket: WebSocket | None = None
        self._receive = receive
        self._rate = rate
        self._burst = float(burst if burst is not None else max(2 * rate, 1.0)) if rate else 0.0
        self._tokens = self._burst
        self._refilled = time.monotonic()
        # The idle timeout: one timer per idle period, not one per message (a timeout per
        # receive() costs ~10 us). It fires, re-arms if the handler waited less than ``idle``,
        # else cancels the waiting task, which turns the cancellation into a 4408 close.
        self._idle = idle
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[object] | None = None
        self._waiting_since = 0.0
        self._timed_out = False

    async def __call__(self) -> Message:
        socket = self.socket
        assert socket is not None, "LimitedReceive.socket must be set before use"
        if self._idle is not None and socket.connection_state is ConnectionState.OPEN:
            loop = asyncio.get_running_loop()
            self._waiting_since = loop.time()
            self._waiter = asyncio.current_task()
            if self._timer is None:
                self._timer = loop.call_at(self._waiting_since + self._idle, self._on_timer)
            try:
                message = await self._receive()
            except asyncio.CancelledError:
                if not self._timed_out:
                    raise
                self._timed_out = False
                if sys.version_info >= (3, 11) and self._waiter is not None:
                    self._waiter.uncancel()
                self.stop()
                return await violate(
                    socket, CloseCode.TIMEOUT, "idle timeout", f"idle for {self._idle:g}s", logging.INFO
                )
            finally:
                self._waiter = None
        else:
            message = await self._receive()
        if message["type"] != "websocket.receive":
            return message
        if self._rate:
            now = time.monotonic()
            tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if tokens < 1.0:
                self.stop()
                return await violate(
                    socket,
                    CloseCode.POLICY_VIOLATION,
                    "message rate limit exceeded",
                    f"message rate over MESSAGE_RATE={self._rate:g}/s (burst {self._burst:g})",
                )
            self._tokens = tokens - 1.0
        return message

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._idle is None:
            return  # not waiting for a message (busy, or finished): the next receive() re-arms
        loop = asyncio.get_running_loop()
        due = self._waiting_since + self._idle
        if loop.time() < due:
            self._timer = loop.call_at(due, self._on_timer)
            return
        self._timed_out = True
        self._waiter.cancel()

    def stop(self) -> None:
        """Cancel the idle timer (the connection is over); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def violate(socket: WebSocket, code: int, reason: str, detail: str, level: int = logging.WARNING) -> Message:
    """Close ``socket`` for breaking a limit and log it; returns the disconnect event to hand the handler.

    Afterwards the socket's ``receive()`` and ``send_*()`` raise ``Disconnected(code)``,
    as after a client's close, so handlers need no code of their own.
    """
    logger.log(
        level,
        "Closing websocket %s for user %s: %s (closed %d)",
        escape_uri_path(socket.path),
        user_id(socket),
        detail,
        code,
    )
    await socket.terminate(code, reason)
    return {"type": "websocket.disconnect", "code": int(code), "reason": reason}


def limit_receive(receive: Receive) -> LimitedReceive | None:
    """Wrap ``receive`` with the rate and idle limits from the ``TETHER`` settings, or None when neither is set."""
    rate = get_setting("MESSAGE_RATE")
    idle = get_setting("IDLE_TIMEOUT")
    if not rate and idle is None:
        return None
    return LimitedReceive(receive, rate, get_setting("MESSAGE_BURST"), idle)
