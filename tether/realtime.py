"""The realtime protocol ``tether.v1``: many groups over one socket, for tether.js and tether.client.

A page opens one socket to a ``RealtimeView`` route and multiplexes groups
over it with JSON commands; each command carries an ``id`` and gets exactly
one reply, and the server pushes what happens in the subscribed groups::

    -> {"id": 1, "type": "subscribe", "group": "chat.lobby"}
    <- {"id": 1, "result": {"group": "chat.lobby", "position": null, "recovered": true}}
    <- {"type": "message", "group": "chat.lobby", "data": {"text": "hi"}}
    -> {"id": 2, "type": "ping"}
    <- {"id": 2, "result": "pong"}

The whole protocol, every error code included, is on docs/protocol.md. The
view decides per user and group (``can_subscribe``/``can_publish`` and their
async twins) and allows nothing by default. A bad command gets an error reply;
it never closes the socket (only the transport limits of ``tether.limits``
do). Commands run one at a time in arrival order, in a task of their own, so
a slow command (a subscribe while the broker is down) never delays a ``ping``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from django.utils.encoding import escape_uri_path

from ._types import Frame
from .auth import user_id
from .codes import CloseCode
from .conf import get_setting
from .exceptions import BackendUnavailable, Disconnected, InvalidGroup, InvalidMessage, InvalidState
from .groups import user_group, validate_group
from .positions import Position, presence_enabled, retention_for
from .presence import listen, presence_json, unlisten
from .publish import broadcast, history
from .urls import Handler
from .views import SocketView
from .websocket import WebSocket, decode_json, encode_json

if TYPE_CHECKING:
    from ._types import User

__all__ = ["PROTOCOL", "ErrorCode", "ProtocolError", "RealtimeView", "message_frame"]

logger = logging.getLogger("tether.realtime")

PROTOCOL = "tether.v1"
"""The subprotocol a client offers and the server selects; a new incompatible version gets a new name."""

MAX_QUEUED_COMMANDS = 1000
"""Commands waiting for their turn on one connection; past this, a command is answered ``rate_limited``."""
HISTORY_LIMIT = 1000
"""The most messages one ``history`` command returns (and its default ``limit``)."""


class ErrorCode:
    """The ``error.code`` strings of replies (docs/protocol.md lists when each is sent)."""

    BAD_REQUEST = "bad_request"  # not JSON, not an object, a field missing or of the wrong type
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_GROUP = "invalid_group"
    FORBIDDEN = "forbidden"  # can_subscribe / can_publish said no
    NOT_SUBSCRIBED = "not_subscribed"  # history or presence of a group the connection did not subscribe to
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    NO_HISTORY = "no_history"  # the group keeps no history (TETHER["GROUPS"])
    NO_PRESENCE = "no_presence"  # the group has no presence (TETHER["GROUPS"])
    UNAVAILABLE = "unavailable"  # the broker is unreachable: try again
    INTERNAL = "internal"  # a hook raised; the server logged it


_PUSH = object()  # a queue item that is a push to send, not a command to answer


class RawJSON(str):
    """A result already encoded as JSON text (spliced into the reply as it is)."""


class ProtocolError(Exception):
    """Raised by a command to answer it with an error reply (``code`` is an ``ErrorCode``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- frames ------------------------------------------------------------------

_wrapped: dict[str, tuple[Frame, Position | None, str]] = {}  # group -> the last push built: one per message
_MAX_WRAPPED = 1024


def message_frame(group: str, frame: Frame, position: Position | None = None) -> str:
    """The ``message`` push for one group message, as JSON text.

    A JSON frame (what ``broadcast`` makes of a dict or list) is spliced in as
    it is, not decoded and encoded again; other text becomes a JSON string and
    bytes a base64 string with ``"encoding": "base64"``. Every subscriber of a
    process gets the same frame object, so the push is built once per message
    and process, not once per socket.
    """
    cached = _wrapped.get(group)
    if cached is not None and cached[0] is frame and cached[1] == position:
        return cached[2]
    head = '{"type":"message","group":' + json.dumps(group, ensure_ascii=False)
    if position is not None:
        head += ',"position":' + encode_json(position.as_dict())
    text = head + _data_fields(frame) + "}"
    if len(_wrapped) >= _MAX_WRAPPED:
        _wrapped.clear()
    _wrapped[group] = (frame, position, text)
    return text


def _data_fields(frame: Frame) -> str:
    """``,"data":...`` for a frame: JSON spliced in, other text as a string, bytes as base64."""
    if isinstance(frame, str):
        if frame[:1] in ("{", "[") and _is_json(frame):
            return ',"data":' + frame
        return ',"data":' + json.dumps(frame, ensure_ascii=False)
    return ',"data":"' + base64.b64encode(frame).decode("ascii") + '","encoding":"base64"'


def _position(value: Any, name: str) -> Position | None:
    """A position sent by a client (``{"offset": int, "epoch": str}``), or None."""
    if value is None:
        return None
    offset = value.get("offset") if isinstance(value, dict) else None
    epoch = value.get("epoch") if isinstance(value, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or not isinstance(epoch, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} is a position: {{offset: int >= 0, epoch: string}}")
    return Position(offset, epoch)


async def _text(text: str) -> str:
    return text


def _is_json(text: str) -> bool:
    """Whether ``text`` is one JSON value (a ``str`` broadcast may merely look like one)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# -- the view ------------------------------------------------------------------


class RealtimeView(SocketView):
    """The ``tether.v1`` endpoint: ``websocket("ws/", MyRealtime.as_handler(), name="realtime")``.

    Subclass it and allow what your users may do: override ``can_subscribe``
    and ``can_publish`` (plain checks on the user and the group name, run on
    the event loop), or their async twins ``acan_subscribe``/``acan_publish``
    when the answer needs the database. By default nothing is allowed except
    subscribing to the user's own ``user_group`` (tether puts every
    authenticated socket in it; subscribing is what forwards its messages).

    Limits (``TETHER`` settings, read per connection): ``MAX_SUBSCRIPTIONS``,
    ``COMMAND_RATE``/``COMMAND_BURST`` and ``MAX_COMMAND_SIZE``. A client that
    doesn't offer the subprotocol ``tether.v1`` is refused (1002, HTTP 400).
    """

    protocol: ClassVar[str] = PROTOCOL

    def __init__(self, socket: WebSocket, **initkwargs: Any) -> None:
        super().__init__(socket, **initkwargs)
        self.subscriptions: set[str] = set()
        self.max_subscriptions = int(get_setting("MAX_SUBSCRIPTIONS"))
        self.max_command_size: int | None = get_setting("MAX_COMMAND_SIZE")
        rate = get_setting("COMMAND_RATE")
        self._rate: float | None = float(rate) if rate else None
        burst = get_setting("COMMAND_BURST")
        self._burst = float(burst if burst is not None else max(2 * (self._rate or 0), 1.0))
        self._tokens = self._burst
        self._refilled = time.monotonic()
        self._commands: asyncio.Queue[tuple[Any, Callable[[], Awaitable[Any]]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    @classmethod
    def as_handler(cls, **initkwargs: Any) -> Handler:
        """The handler to route; guards (``@login_required``...) refuse *after* the handshake here.

        A browser can't read the status of a refused handshake (it sees 1006),
        so on this endpoint a guard's refusal is an accepted connection closed
        at once with the guard's code (4401, 4403): tether.js reads it and
        stops reconnecting.
        """
        checked = super().as_handler(**initkwargs)  # validates initkwargs; its metadata is reused

        async def handler(socket: WebSocket) -> None:
            for guard in cls.guards:
                refusal = await guard(socket)
                if refusal is not None:
                    code, reason = refusal
                    logger.warning(
                        "Refused websocket %s for user %s: %s (closed %d after the handshake)",
                        escape_uri_path(socket.path),
                        user_id(socket),
                        reason,
                        code,
                    )
                    if cls.protocol in socket.subprotocols:
                        await socket.accept(cls.protocol)
                    await socket.close(code, reason)
                    return
            await cls(socket, **initkwargs).dispatch()

        functools.update_wrapper(handler, checked)
        handler.view_class = cls  # type: ignore[attr-defined]
        return handler

    # -- permissions: override these ----------------------------------------

    def can_subscribe(self, user: User, group: str) -> bool:
        """Whether ``user`` may subscribe to ``group``. Default: no. Runs on the event loop: no DB here."""
        return False

    def can_publish(self, user: User, group: str, data: Any) -> bool:
        """Whether ``user`` may publish ``data`` to ``group``. Default: no. Runs on the event loop."""
        return False

    async def acan_subscribe(self, user: User, group: str) -> bool:
        """The async twin of ``can_subscribe`` (which it calls by default); override it to query the DB."""
        return self.can_subscribe(user, group)

    async def acan_publish(self, user: User, group: str, data: Any) -> bool:
        """The async twin of ``can_publish`` (which it calls by default); override it to query the DB."""
        return self.can_publish(user, group, data)

    async def prepare_publish(self, group: str, data: Any) -> Any:
        """What a permitted ``publish`` broadcasts: ``data`` as the client sent it, by default.

        Runs after ``acan_publish`` allowed the command, on the event loop (await
        the ORM's async methods here). Override it to validate the data, store it,
        stamp it with what the client can't be trusted to say (the author, the
        time, a database id), and return what subscribers should get: a dict, a
        list or a string. Raise ``ProtocolError(ErrorCode.BAD_REQUEST, "...")``
        (or another code) to refuse the command: the client gets that error
        reply, and nothing is broadcast. Any other exception answers
        ``internal`` and is logged.
        """
        return data

    # -- the connection --------------------------------------------------------

    async def connect(self) -> None:
        """Accept with ``tether.v1`` selected; refuse a client that doesn't speak it."""
        if self.protocol not in self.socket.subprotocols:
            logger.warning(
                "Refused websocket %s: the client did not offer the subprotocol %s (closed %d)",
                escape_uri_path(self.socket.path),
                self.protocol,
                CloseCode.PROTOCOL_ERROR,
            )
            await self.socket.deny(CloseCode.PROTOCOL_ERROR, f"offer the subprotocol {self.protocol}", status=400)
            return
        await self.accept(self.protocol)

    async def dispatch(self) -> None:
        """Run the connection; then stop the command worker and the presence listeners (even if
        ``disconnect`` is overridden)."""
        try:
            await super().dispatch()
        finally:
            if self._worker is not None:
                self._worker.cancel()
            for group in list(self.subscriptions):
                if presence_enabled(group):
                    await unlisten(group, self._presence_event)

    def _presence_event(self, group: str, push: str) -> None:
        """A ``join``/``leave`` of a subscribed group with presence: queued behind the commands, in order."""
        if group in self.subscriptions:
            self._enqueue(_PUSH, functools.partial(_text, push))

    async def group_message(self, group: str, message: Frame, position: Position | None = None) -> Frame | None:
        """Wrap a message of a subscribed group as a ``message`` push (with its position); drop the others."""
        if group not in self.subscriptions:
            return None
        return message_frame(group, message, position)

    async def end_subscription(self, group: str, reason: str = "") -> None:
        """End the client's subscription to ``group`` from the server (e.g. permission revoked).

        The client gets an ``unsubscribed`` push with ``reason``. Idempotent:
        nothing is sent for a group it isn't subscribed to.
        """
        if group not in self.subscriptions:
            return
        self.subscriptions.discard(group)
        await self.leave(group)
        if presence_enabled(group):
            await unlisten(group, self._presence_event)
        await self._send({"type": "unsubscribed", "group": group, "reason": reason})

    # -- commands ----------------------------------------------------------------

    async def receive_bytes(self, data: bytes) -> None:
        """Binary frames are not commands: answered with ``bad_request``."""
        await self._error(None, ErrorCode.BAD_REQUEST, "commands are JSON text frames, not binary")

    async def receive(self, text: str) -> None:
        """Parse one command, answer ``ping`` at once, queue the others for the worker."""
        try:
            command = decode_json(text)
        except InvalidMessage as exc:
            await self._error(None, ErrorCode.BAD_REQUEST, str(exc))
            return
        if not isinstance(command, dict):
            await self._error(None, ErrorCode.BAD_REQUEST, "a command is a JSON object")
            return
        ident = command.get("id")
        if not (isinstance(ident, int) and not isinstance(ident, bool)) and not (
            isinstance(ident, str) and len(ident) <= 64
        ):
            await self._error(None, ErrorCode.BAD_REQUEST, "a command needs an id: an integer or a short string")
            return
        kind = command.get("type")
        if kind == "ping":  # never rate limited, never queued: heartbeats must not wait for work
            await self._send({"id": ident, "result": "pong"})
            return
        run = self._handlers.get(kind) if isinstance(kind, str) else None
        if run is None:
            await self._error(ident, ErrorCode.UNKNOWN_COMMAND, f"unknown command type {kind!r}")
            return
        if self.max_command_size is not None and len(text) * 4 > self.max_command_size:
            size = _size(text)
            if size > self.max_command_size:
                await self._error(
                    ident, ErrorCode.TOO_LARGE, f"the command is {size} bytes; the limit is {self.max_command_size}"
                )
                return
        if not self._take_token() or self._commands.qsize() >= MAX_QUEUED_COMMANDS:
            await self._error(ident, ErrorCode.RATE_LIMITED, "too many commands; slow down")
            return
        self._enqueue(ident, lambda: run(self, command))

    def _enqueue(self, ident: Any, run: Callable[[], Awaitable[Any]]) -> None:
        self._commands.put_nowait((ident, run))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="tether-realtime-commands")

    def _take_token(self) -> bool:
        if self._rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _work(self) -> None:
        """Run queued commands one at a time, in arrival order, answering each."""
        try:
            while True:
                ident, run = await self._commands.get()
                if ident is _PUSH:
                    await self.socket.send_text(await run())
                    continue
                try:
                    result = await run()
                except ProtocolError as exc:
                    await self._error(ident, exc.code, exc.message)
                except InvalidGroup as exc:
                    await self._error(ident, ErrorCode.INVALID_GROUP, str(exc))
                except BackendUnavailable as exc:
                    await self._error(ident, ErrorCode.UNAVAILABLE, f"the broker is unreachable: {exc}")
                except (Disconnected, InvalidState):
                    return
                except Exception:
                    logger.exception("Command %r on websocket %s raised", ident, escape_uri_path(self.socket.path))
                    await self._error(ident, ErrorCode.INTERNAL, "the server failed to run the command")
                else:
                    if isinstance(result, RawJSON):
                        await self.socket.send_text('{"id":' + encode_json(ident) + ',"result":' + result + "}")
                    else:
                        await self._send({"id": ident, "result": result})
        except (Disconnected, InvalidState):
            return

    async def _send(self, reply: Any) -> None:
        await self.socket.send_text(encode_json(reply))

    async def _error(self, ident: Any, code: str, message: str) -> None:
        await self._send({"id": ident, "error": {"code": code, "message": message}})

    @staticmethod
    def _group(command: dict[str, Any]) -> str:
        group = command.get("group")
        if not isinstance(group, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "the command needs a group (a string)")
        return validate_group(group)

    def _may_subscribe_own(self, group: str) -> bool:
        user = self.user
        return bool(user.is_authenticated) and group == user_group(user)

    async def _subscribe(self, command: dict[str, Any]) -> Any:
        group = self._group(command)
        since = _position(command.get("since"), "since")
        if group in self.subscriptions:
            return {"group": group, "position": None, "recovered": False}  # already: nothing replayed
        if len(self.subscriptions) >= self.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"a connection may subscribe to {self.max_subscriptions} groups (TETHER['MAX_SUBSCRIPTIONS'])",
            )
        if not (self._may_subscribe_own(group) or await self.acan_subscribe(self.user, group)):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {group!r}")
        self.subscriptions.add(group)  # before the join: what arrives once it is in place goes out
        presence = presence_enabled(group)
        try:
            if presence:
                await listen(group, self._presence_event)  # before the join: its own join is pushed too
            joined = await self.join(group, since)
        except BaseException:
            self.subscriptions.discard(group)
            if presence:
                await unlisten(group, self._presence_event)
            raise
        position = joined.position.as_dict() if joined.position is not None else None
        return {"group": group, "position": position, "recovered": joined.recovered}

    async def _unsubscribe(self, command: dict[str, Any]) -> Any:
        group = self._group(command)
        if group in self.subscriptions:
            self.subscriptions.discard(group)
            await self.leave(group)
            if presence_enabled(group):
                await unlisten(group, self._presence_event)
        return {"group": group}

    async def _publish(self, command: dict[str, Any]) -> Any:
        group = self._group(command)
        if "data" not in command:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "publish needs data")
        data = command["data"]
        if not isinstance(data, (dict, list, str)):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "publish data is an object, an array or a string")
        if not await self.acan_publish(self.user, group, data):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to publish to {group!r}")
        data = await self.prepare_publish(group, data)
        position = await broadcast(group, data)
        return {"group": group, "position": position.as_dict() if position is not None else None}

    async def _history(self, command: dict[str, Any]) -> Any:
        group = self._group(command)
        if group not in self.subscriptions:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, f"subscribe to {group!r} first")
        since = _position(command.get("since"), "since")
        limit = command.get("limit")
        if limit is None:
            limit = HISTORY_LIMIT
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_LIMIT:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"limit is an integer from 1 to {HISTORY_LIMIT}")
        if retention_for(group) is None:
            raise ProtocolError(ErrorCode.NO_HISTORY, f"group {group!r} keeps no history (TETHER['GROUPS'])")
        page = await history(group, since, limit)
        messages = ",".join(
            '{"position":' + encode_json(m.position.as_dict()) + _data_fields(m.data) + "}" for m in page.messages
        )
        return RawJSON(
            '{"group":'
            + json.dumps(group, ensure_ascii=False)
            + ',"messages":['
            + messages
            + '],"position":'
            + encode_json(page.position.as_dict())
            + ',"recovered":'
            + ("true" if page.recovered else "false")
            + "}"
        )

    async def _presence(self, command: dict[str, Any]) -> Any:
        group = self._group(command)
        if group not in self.subscriptions:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED, f"subscribe to {group!r} first")
        if not presence_enabled(group):
            raise ProtocolError(ErrorCode.NO_PRESENCE, f"group {group!r} has no presence (TETHER['GROUPS'])")
        members = await presence_json(group)
        return RawJSON('{"group":' + json.dumps(group, ensure_ascii=False) + ',"members":' + members + "}")

    _handlers: ClassVar[dict[str, Callable[[RealtimeView, dict[str, Any]], Awaitable[Any]]]] = {
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "publish": _publish,
        "history": _history,
        "presence": _presence,
    }
