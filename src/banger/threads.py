"""Blocking work off the event loop, without letting a cancel race the thread's cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` in a thread; on cancellation wait for it to stop before re-raising.

    Callers clean up (remove a staging directory) after a cancel, so the thread must be done writing first.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise
