"""asyncio helpers."""

from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that never loses a cancellation of the caller.

    Before Python 3.12, ``asyncio.wait_for`` can swallow a cancellation that races
    with the inner awaitable finishing (CPython gh-86296): a task cancelled while
    looping over ``wait_for`` then never ends, and shutdown hangs. This version
    waits with ``asyncio.wait``, which lets the caller's cancellation through.
    Raises ``asyncio.TimeoutError`` (``TimeoutError`` from 3.11) on timeout.
    """
    if sys.version_info >= (3, 12):
        return await asyncio.wait_for(aw, timeout)
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError()
    return task.result()
