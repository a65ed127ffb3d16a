"""One asyncio lock per key that exists only while someone holds or waits for it (pure asyncio).

The Reconciler serialises passes per job. A plain `dict[key, Lock]` keeps a lock for every job the
operator ever reconciled until the job object is deleted (finished jobs wait for their TTL, possibly
days): per-job memory that grows with the jobs kept, not with the work in flight. Here the entry
is dropped when its last user leaves, so the table holds at most the jobs being reconciled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
