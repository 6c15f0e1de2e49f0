"""WebSocket close codes that tether sends, as one ``IntEnum``.

Every code tether itself sends is listed here and in the README's close-code
table. A ``CloseCode`` is an ``int``, so any API taking a code accepts either.
The 4xxx codes are application codes (RFC 6455 §7.4.2) chosen to mirror the
HTTP status a plain request would have received.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    """The close codes tether sends: RFC 6455's 1xxx codes and its own 4xxx application codes."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect elsewhere
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # e.g. a binary frame to a text-only handler
    NO_STATUS = 1005  # reported by peers, never sent
    ABNORMAL_CLOSURE = 1006  # connection dropped without a close frame, never sent
    INVALID_DATA = 1007  # e.g. malformed JSON to receive_json()
    POLICY_VIOLATION = 1008  # e.g. message rate limit exceeded
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # the handler raised
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # outbound queue overflowed (slow consumer)
    UNAUTHORIZED = 4401  # a guard refused an anonymous user
    FORBIDDEN = 4403  # a guard or the Origin check refused the handshake
    NOT_FOUND = 4404  # no websocket route matches the path
    TIMEOUT = 4408  # idle or handshake timeout
