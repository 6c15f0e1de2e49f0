"""A small async Python client of the realtime protocol ``tether.v1``, for services, scripts and tests.

Needs the ``websockets`` package (``pip install django-tether[client]``),
imported when ``connect()`` is first called, so the core keeps to Django and
asgiref. It imports no Django either: it runs in any asyncio program::

    from tether.client import connect

    async with connect("wss://example.com/ws/", token=token) as client:
        room = await client.subscribe("chat.lobby")
        await client.publish("chat.lobby", {"text": "hi"})
        async for message in room:
            print(message.data, message.position)

One connection, no automatic reconnect (tether.js has one): when the
connection ends, iterators stop and pending commands raise ``CommandError``
with code ``"disconnected"``; reconnect and ``subscribe(group, since=...)``
with the last position to recover what was missed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PROTOCOL", "Client", "CommandError", "Message", "Subscription", "connect"]

PROTOCOL = "tether.v1"
"""The subprotocol the client offers (``tether.realtime.PROTOCOL``)."""


class CommandError(Exception):
    """A command's error reply (``code`` from docs/protocol.md), or ``"timeout"``/``"disconnected"``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Message:
    """One message of a subscribed group: its data (decoded JSON, or ``bytes``) and position (or None)."""

    group: str
    data: Any
    position: dict[str, Any] | None


_END = object()


class Subscription:
    """A subscribed group: iterate it for its messages; ``result`` is the subscribe reply.

    ``recovered`` is False when ``since`` was given but messages after it are
    gone. ``position`` follows the last message taken from the iterator.
    """

    def __init__(self, client: Client, group: str) -> None:
        self.client = client
        self.group = group
        self.result: dict[str, Any] = {}
        self.position: dict[str, Any] | None = None
        self.members: list[dict[str, Any]] = []
        self.ended: str | None = None  # why the subscription ended, once it has
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    @property
    def recovered(self) -> bool:
        return bool(self.result.get("recovered", True))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # every later iteration ends too
                return
            if item.position is not None:
                self.position = item.position
            yield item

    async def get(self, timeout: float | None = None) -> Message:
        """The next message; raises ``TimeoutError`` after ``timeout`` s, ``CommandError`` once it ended."""
        async with asyncio.timeout(timeout) if hasattr(asyncio, "timeout") else _timeout(timeout):
            item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise CommandError("disconnected", self.ended or "the subscription ended")
        if item.position is not None:
            self.position = item.position
        return item  # type: ignore[no-any-return]

    async def unsubscribe(self) -> None:
        """End the subscription (idempotent)."""
        if self.client._subscriptions.pop(self.group, None) is self:
            self._end("unsubscribed")
            await self.client.call("unsubscribe", group=self.group)

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            self._queue.put_nowait(_END)


@contextlib.asynccontextmanager
async def _timeout(seconds: float | None) -> AsyncIterator[None]:  # asyncio.timeout() before Python 3.11
    task = asyncio.current_task()
    assert task is not None
    handle = asyncio.get_running_loop().call_later(seconds, task.cancel) if seconds is not None else None
    try:
        yield
    except asyncio.CancelledError:
        if handle is not None and handle.when() <= asyncio.get_running_loop().time():
            raise TimeoutError from None
        raise
    finally:
        if handle is not None:
            handle.cancel()


class Client:
    """One ``tether.v1`` connection; made by ``connect()``."""

    def __init__(self, connection: Any, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="tether-client-reader")
        self.close_code: int | None = None

    async def call(self, kind: str, **fields: Any) -> Any:
        """Send one command and return its result; raises ``CommandError`` for an error reply or a timeout."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self.connection.send(json.dumps({"id": ident, "type": kind, **fields}))
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise CommandError("timeout", f"no reply to {kind} within {self.timeout}s") from None
        except Exception as exc:
            if isinstance(exc, CommandError):
                raise
            raise CommandError("disconnected", str(exc)) from exc
        finally:
            self._pending.pop(ident, None)

    async def subscribe(self, group: str, since: dict[str, Any] | None = None) -> Subscription:
        """Subscribe to ``group`` (from ``since``, a position, in a group with history)."""
        subscription = self._subscriptions.get(group)
        if subscription is None:
            subscription = self._subscriptions[group] = Subscription(self, group)
        fields: dict[str, Any] = {"group": group}
        if since is not None:
            fields["since"] = since
        try:
            subscription.result = await self.call("subscribe", **fields)
        except CommandError:
            if self._subscriptions.get(group) is subscription:
                del self._subscriptions[group]
            raise
        if subscription.position is None:  # else messages already moved it (they may overtake the reply)
            subscription.position = since if subscription.recovered else subscription.result.get("position")
        return subscription

    async def publish(self, group: str, data: Any) -> Any:
        """Publish ``data`` (a dict, list or str) to ``group``: ``{"group", "position"}``."""
        return await self.call("publish", group=group, data=data)

    async def history(self, group: str, since: dict[str, Any] | None = None, limit: int | None = None) -> Any:
        """The group's stored messages after ``since``: ``{"messages", "position", "recovered"}``."""
        return await self.call("history", group=group, since=since, limit=limit)

    async def presence(self, group: str) -> Any:
        """Who is in ``group``: ``{"group", "members": [{"user", "connection", "info"}]}``."""
        return await self.call("presence", group=group)

    async def ping(self) -> None:
        """One heartbeat; raises ``CommandError`` (``"timeout"``) if the server doesn't answer in time."""
        await self.call("ping")

    async def close(self) -> None:
        """Close the connection and end every subscription. Idempotent."""
        await self.connection.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        try:
            async for text in self.connection:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind is None:
                    future = self._pending.get(frame.get("id"))
                    if future is not None and not future.done():
                        if "error" in frame:
                            error = frame["error"]
                            future.set_exception(CommandError(error["code"], error["message"]))
                        else:
                            future.set_result(frame.get("result"))
                    continue
                subscription = self._subscriptions.get(frame.get("group"))
                if subscription is None:
                    continue
                if kind == "message":
                    data = frame.get("data")
                    if frame.get("encoding") == "base64":
                        data = base64.b64decode(data)
                    subscription._queue.put_nowait(Message(subscription.group, data, frame.get("position")))
                elif kind == "join":
                    subscription.members.append(frame["member"])
                elif kind == "leave":
                    member = frame["member"]
                    subscription.members = [m for m in subscription.members if m != member]
                elif kind == "unsubscribed":
                    del self._subscriptions[subscription.group]
                    subscription._end(frame.get("reason") or "unsubscribed by the server")
        except Exception:  # the connection failed: end like a close
            pass
        finally:
            self.close_code = getattr(self.connection, "close_code", None)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CommandError("disconnected", f"connection closed ({self.close_code})"))
            for subscription in self._subscriptions.values():
                subscription._end(f"connection closed ({self.close_code})")


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    additional_headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[Client]:
    """Open a ``tether.v1`` connection to ``url`` for the ``async with`` block.

    ``token`` (from ``tether.auth.issue_token``) is sent as
    ``Authorization: Bearer``. ``timeout`` bounds the handshake and each
    command's reply; the connection's liveness is checked with WebSocket pings
    every ``ping_interval`` seconds (this client can send them; browsers
    can't, hence the protocol's ``ping`` command for tether.js).
    """
    try:
        from websockets.asyncio.client import connect as ws_connect
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("tether.client needs the websockets package: pip install 'django-tether[client]'") from exc
    headers = list(additional_headers)
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    connection = await ws_connect(
        url,
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
        additional_headers=headers,
        open_timeout=timeout,
        ping_interval=ping_interval,
        max_size=None,
    )
    client = Client(connection, timeout)
    try:
        yield client
    finally:
        await client.close()
