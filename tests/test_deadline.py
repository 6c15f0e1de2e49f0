"""tether._deadline.within: asyncio.wait_for's behaviour without its task per call."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tether._deadline import within

needs_uncancel = pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 uses asyncio.wait_for")


async def test_returns_the_result_and_leaves_no_timer_or_task() -> None:
    async def answer() -> int:
        return 42

    loop = asyncio.get_running_loop()
    tasks = len(asyncio.all_tasks())
    assert await within(answer(), 10) == 42
    assert len(asyncio.all_tasks()) == tasks
    scheduled = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled() and h.when() > loop.time() + 5]
    assert scheduled == []


async def test_raises_the_awaitables_error() -> None:
    async def fail() -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        await within(fail(), 10)


async def test_times_out_after_the_awaitable_cleaned_up() -> None:
    cleaned = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)  # noqa: sleep-ok the slow awaitable the deadline cuts short
        finally:
            cleaned.append(True)

    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.TimeoutError):
        await within(slow(), 0.05)
    assert cleaned == [True]
    assert asyncio.get_running_loop().time() - started < 1
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0  # the deadline's cancellation was taken back
    await asyncio.sleep(0)  # noqa: sleep-ok one loop turn: a stray cancellation would land here


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    started = asyncio.Event()

    async def waiter() -> None:
        started.set()
        await within(asyncio.sleep(10), 5)  # noqa: sleep-ok the awaitable being bounded, never awaited out

    task = asyncio.create_task(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@needs_uncancel
async def test_a_cancellation_from_elsewhere_racing_the_deadline_still_cancels() -> None:
    """Both the deadline and another task cancel at once: CancelledError wins, as with asyncio.timeout()."""

    async def racer() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        loop.call_later(0.01, me.cancel)  # from elsewhere, at the same moment as the deadline
        await within(asyncio.sleep(10), 0.01)  # noqa: sleep-ok the awaitable being bounded, never awaited out

    task = asyncio.create_task(racer())
    with pytest.raises(asyncio.CancelledError):
        await task


@needs_uncancel
async def test_an_awaitable_that_swallows_the_deadline_returns_and_the_task_is_not_left_cancelling() -> None:
    """websockets' legacy close() catches CancelledError while it waits for the peer: the result stands."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)  # noqa: sleep-ok the slow awaitable the deadline cuts short
        except asyncio.CancelledError:
            return "closed anyway"
        return "never"

    assert await within(stubborn(), 0.02) == "closed anyway"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # noqa: sleep-ok one loop turn: a pending cancellation would land here
