"""SocketView: the class-based form of a handler.

Override hooks, not loops: ``connect()`` decides the handshake, ``receive()`` /
``receive_json()`` / ``receive_bytes()`` take one message each, and
``disconnect(code)`` runs exactly once at the end, however the connection ended.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ._types import Frame
from .closing import close_for_exception
from .codes import CloseCode
from .exceptions import InvalidMessage
from .guards import Guard, run_guards
from .positions import JoinResult, Position
from .publish import broadcast
from .urls import Handler
from .websocket import ConnectionState, WebSocket, decode_json

if TYPE_CHECKING:
    from ._types import User

__all__ = ["SocketView"]

logger = logging.getLogger("tether.views")


class SocketView:
    """A WebSocket handler written as a class; route it with ``MyView.as_handler()``.

    One instance serves one connection. A hook that raises closes the socket
    with 1011 (or the ``InvalidMessage`` code) and the error is logged with its
    traceback; other connections are not affected.
    """

    http_method_names: ClassVar[list[str]] = []  # keeps Django's admindocs and friends quiet
    guards: ClassVar[tuple[Guard, ...]] = ()  # run by as_handler() before the view exists (@login_required adds)

    def __init__(self, socket: WebSocket, **initkwargs: Any) -> None:
        self.socket = socket
        for key, value in initkwargs.items():
            setattr(self, key, value)
        if type(self).group_message is not SocketView.group_message:
            socket.group_hook = _group_hook(self.group_message)  # the default costs nothing per delivery
        if type(self).presence_info is not SocketView.presence_info:
            socket.presence_hook = self.presence_info

    @classmethod
    def as_handler(cls, **initkwargs: Any) -> Handler:
        """The handler to pass to ``websocket()``; ``initkwargs`` become instance attributes."""
        for key in initkwargs:
            if not hasattr(cls, key):
                raise TypeError(f"{cls.__name__}.as_handler() got {key!r}, which is not an attribute of the class")

        async def handler(socket: WebSocket) -> None:
            if cls.guards and not await run_guards(socket, cls.guards):
                return  # refused: the view never existed, so no connect() and no disconnect()
            await cls(socket, **initkwargs).dispatch()

        handler.view_class = cls  # type: ignore[attr-defined]
        handler.__name__ = cls.__name__
        handler.__qualname__ = cls.__qualname__
        handler.__module__ = cls.__module__
        handler.__doc__ = cls.__doc__
        return handler

    # -- the connection, for convenience ---------------------------------

    @property
    def scope(self) -> dict[str, Any]:
        return self.socket.scope

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.socket.kwargs

    @property
    def user(self) -> User:
        """The connection's user (``AnonymousUser`` when not logged in), resolved before ``connect()``."""
        return self.socket.user

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Accept the handshake: ``WebSocket.accept()`` on ``self.socket``."""
        await self.socket.accept(subprotocol, headers)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close (or, before ``accept()``, refuse) the connection: ``WebSocket.close()``."""
        await self.socket.close(code, reason)

    async def send_text(self, data: str) -> None:
        """Send one text frame: ``WebSocket.send_text()``."""
        await self.socket.send_text(data)

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame: ``WebSocket.send_bytes()``."""
        await self.socket.send_bytes(data)

    async def send_json(self, data: Any) -> None:
        """Send ``data`` as one JSON text frame: ``WebSocket.send_json()``."""
        await self.socket.send_json(data)

    # -- groups ------------------------------------------------------------

    async def join(self, group: str, since: Position | None = None) -> JoinResult:
        """Receive ``group``'s broadcasts, first what was missed after ``since`` in a group with history
        (see ``WebSocket.join``); idempotent."""
        return await self.socket.join(group, since)

    async def leave(self, group: str) -> None:
        """Stop receiving ``group``'s broadcasts; idempotent."""
        await self.socket.leave(group)

    async def broadcast(self, group: str, data: Any) -> Position | None:
        """Send ``data`` to every socket in ``group``, in every process (``tether.broadcast``);
        returns its position in a group with history."""
        return await broadcast(group, data)

    async def group_message(self, group: str, message: Frame, position: Position | None = None) -> Frame | None:
        """Called for each group message before it is sent to this connection.

        ``message`` is the frame as broadcast: ``str`` (JSON messages arrive as
        their encoded text) or ``bytes``. ``position`` is its ``Position`` in a
        group with history (None otherwise): send it along so the client can
        rejoin with ``since``. An override may leave ``position`` out of its
        signature (written before positions existed); it is then not passed.
        Return what to send, or None to skip it for this connection. The
        default sends it as is. Runs in the socket's writer, so a slow hook
        delays only this socket; if it raises, the socket closes with 1011.
        """
        return message

    def presence_info(self) -> Any:
        """What others see of this connection in a group with presence (``Member.info``): JSON-encodable,
        called when it joins such a group. The default: None. Runs on the event loop: no DB here."""
        return None

    # -- hooks -----------------------------------------------------------

    async def connect(self) -> None:
        """Decide the handshake. The default accepts; not accepting refuses (403)."""
        await self.accept()

    async def receive(self, text: str) -> None:
        """One text message. The default decodes JSON and calls ``receive_json()``."""
        await self.receive_json(decode_json(text))

    async def receive_json(self, data: Any) -> None:
        """One JSON message. Not overridden: text messages close the socket with 1003."""
        raise InvalidMessage(f"{type(self).__name__} takes no text messages", CloseCode.UNSUPPORTED_DATA)

    async def receive_bytes(self, data: bytes) -> None:
        """One binary message. Not overridden: binary messages close the socket with 1003."""
        raise InvalidMessage(f"{type(self).__name__} takes no binary messages", CloseCode.UNSUPPORTED_DATA)

    async def disconnect(self, code: int) -> None:
        """Called once when the connection has ended, with its close code."""

    # -- the loop ----------------------------------------------------------

    async def dispatch(self) -> None:
        """Run the hooks for one connection; returns when it is closed."""
        socket = self.socket
        try:
            await socket.auser()
            await self.connect()
            while socket.connection_state is ConnectionState.OPEN:
                data = await socket.receive()
                if isinstance(data, str):
                    await self.receive(data)
                else:
                    await self.receive_bytes(data)
        except Exception as exc:
            await close_for_exception(socket, exc)
        finally:
            await socket.close()  # no-op if closed; refuses the handshake if connect() didn't accept
            try:
                await self.disconnect(socket.close_code or CloseCode.ABNORMAL_CLOSURE)
            except Exception:
                logger.exception("%s.disconnect() raised", type(self).__name__)


def _group_hook(method: Callable[..., Awaitable[Frame | None]]) -> Callable[..., Awaitable[Frame | None]]:
    """``method`` as a ``GroupHook``: called with the position if its signature takes one."""
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):  # no signature to read: assume the current one
        return method
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return method

    async def without_position(group: str, message: Frame, position: Position | None) -> Frame | None:
        return await method(group, message)

    return without_position
