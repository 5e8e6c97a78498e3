"""lbd.aio.wait_for: timeouts, results, and a caller's cancellation is never lost."""

from __future__ import annotations

import asyncio

import pytest

from lbd.aio import wait_for


async def test_result_and_timeout():
    async def value():
        return 7

    assert await wait_for(value(), 1) == 7
    with pytest.raises(asyncio.TimeoutError):
        await wait_for(asyncio.sleep(10), 0.01)


async def test_inner_exception_propagates():
    async def boom():
        raise ValueError("x")

    with pytest.raises(ValueError):
        await wait_for(boom(), 1)


async def test_cancelling_a_loop_over_wait_for_always_ends_it():
    # A loop whose inner awaitable finishes at the moment it is cancelled: with the
    # stdlib's wait_for on Python 3.11 the cancellation can be swallowed and the loop spins.
    for _ in range(200):
        event = asyncio.Event()

        async def loop() -> None:
            while True:
                try:
                    await wait_for(event.wait(), 0.001)
                except asyncio.TimeoutError:
                    pass

        task = asyncio.ensure_future(loop())
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, "the cancellation was lost"
