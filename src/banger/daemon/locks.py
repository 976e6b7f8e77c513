"""Named, keyed locks: one per VM, plus the few short global ones (see the ordering in the package doc)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLock:
    """One asyncio.Lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self, name: str):
        self.name = name
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._locks[key]

    def locked(self, key: str) -> bool:
        lock = self._locks.get(key)
        return bool(lock and lock.locked())
