"""``within(awaitable, timeout)``: ``asyncio.wait_for`` without a task per call.

On Python 3.11, ``wait_for`` wraps the awaitable in a new task (about 13 us with its timer and
the extra event-loop steps) and ``asyncio.timeout()`` costs about 4.5 us; tether bounds two
awaits of every connection (the server's ``websocket.connect`` and the close frame), so this
does what ``asyncio.timeout()`` does with one timer handle and nothing else (about 2 us): the
timer cancels the awaiting task, and that cancellation, if no other arrived meanwhile, becomes
``TimeoutError``. Python 3.10 has no ``Task.uncancel()`` to tell the two apart, so there it
is ``wait_for``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

_T = TypeVar("_T")


class _Deadline:
    """The timer's callback: cancels ``task`` and remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[_T], timeout: float) -> _T:
        """``await awaitable``, raising ``asyncio.TimeoutError`` if it takes over ``timeout`` seconds.

        As with ``asyncio.timeout()``: on time out the awaitable is cancelled (its
        cleanup runs) before the error is raised, and a cancellation from elsewhere
        still propagates as ``CancelledError``.
        """
        task = asyncio.current_task()
        if task is None:  # not in a task (a bare coroutine driven by hand): nothing to cancel
            return await asyncio.wait_for(awaitable, timeout)
        loop = asyncio.get_running_loop()
        cancelling = task.cancelling()
        deadline = _Deadline(task)
        handle = loop.call_at(loop.time() + timeout, deadline)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if deadline.fired and task.uncancel() <= cancelling:
                raise asyncio.TimeoutError from None  # only the deadline cancelled it
            raise
        finally:
            handle.cancel()
        if deadline.fired:  # the awaitable swallowed the deadline's cancellation: take it back
            task.uncancel()
        return result

else:  # pragma: no cover - Python 3.10

    async def within(awaitable: Awaitable[_T], timeout: float) -> _T:
        """``await awaitable``, raising ``asyncio.TimeoutError`` if it takes over ``timeout`` seconds."""
        return await asyncio.wait_for(awaitable, timeout)
