"""Handlers for tests/test_core.py: each records what it saw, so a test can assert on the handler's side."""

from __future__ import annotations

import asyncio
from typing import Any

from tether import Disconnected, InvalidMessage, SocketView, WebSocket
from tether._types import Frame

OUTCOMES: list[tuple[str, str, int | None]] = []  # (step, exception class, close code)
HOOK: dict[str, asyncio.Event] = {}  # the steps of the hook test, set by the test
SEEN_KWARGS: list[dict[str, Any]] = []
LATE_USERS: list[Any] = []


def _record(step: str, exc: BaseException) -> None:
    OUTCOMES.append((step, type(exc).__name__, getattr(exc, "code", None)))


async def probe(socket: WebSocket) -> None:
    """Joins its group, then waits; whatever ends the wait, tries one more send."""
    await socket.accept()
    await socket.join(socket.kwargs["group"])
    await socket.send_text("joined")
    try:
        await socket.receive_text()
    except Exception as exc:
        _record("receive", exc)
        try:
            await socket.send_text("after")
        except Exception as exc:
            _record("send", exc)
        raise


class HookedView(SocketView):
    """Its group_message hook waits for the test; "close" makes the view close meanwhile."""

    async def connect(self) -> None:
        await self.accept()
        await self.join(self.kwargs["group"])
        await self.send_text("joined")

    async def group_message(self, group: str, message: Frame) -> Frame | None:
        HOOK["entered"].set()
        await HOOK["release"].wait()
        HOOK["returned"].set()  # the writer goes on in this same step: send or not, it has decided
        return message

    async def receive(self, text: str) -> None:
        if text == "close":
            await self.close()

    async def disconnect(self, code: int) -> None:
        await HOOK["cleaned"].wait()  # slow cleanup (an ORM save, say): the handler is still running


async def quiet(socket: WebSocket) -> None:
    """A function handler that never calls auser(): joins only the control group it is told."""
    await socket.accept()
    await socket.join(socket.kwargs["group"])
    await socket.send_text("joined")
    async for _ in socket.iter_text():
        pass


async def late_user(socket: WebSocket) -> None:
    """Asks for its user only after the client left."""
    await socket.accept()
    await socket.send_text("ready")
    async for _ in socket.iter_text():
        pass
    LATE_USERS.append(await socket.auser())


async def kwargs_mutator(socket: WebSocket) -> None:
    """Reports its kwargs, then changes their source in place, as a careless handler might."""
    SEEN_KWARGS.append(dict(socket.kwargs))
    if socket.resolver_match is not None:
        socket.resolver_match.kwargs["extra"] = "leaked"
    await socket.accept()
    await socket.send_json(dict(socket.kwargs))
    async for _ in socket.iter_text():
        pass


async def shadow_echo(socket: WebSocket) -> None:
    await socket.accept()
    async for text in socket.iter_text():
        await socket.send_text(f"ws:{text}")


ENDINGS: list[Any] = []  # how each fuzz handler ended: a close code, "closed", or what escaped


async def fuzz_handler(socket: WebSocket) -> None:
    """Obeys its client: "join g", "leave g", "both g h" (two joins at once), "echo x", "close"."""
    try:
        await socket.accept()
        while True:
            command, _, arg = (await socket.receive_text()).partition(" ")
            if command == "join":
                await socket.join(arg)
            elif command == "leave":
                await socket.leave(arg)
            elif command == "both":
                await asyncio.gather(*(socket.join(group) for group in arg.split()))
            elif command == "echo":
                await socket.send_text(arg)
            elif command == "close":
                await socket.close()
                ENDINGS.append("closed")
                return
    except Disconnected as exc:
        ENDINGS.append(exc.code)
    except InvalidMessage:
        ENDINGS.append("invalid")  # a binary frame for receive_text(): tether closes with 1003
        raise
    except BaseException as exc:
        ENDINGS.append(repr(exc))
        raise
