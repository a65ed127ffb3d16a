"""Fair scheduling across tenants for the local backend's workers.

Each tenant has its own FIFO. A free worker takes the head of the tenant with the fewest running jobs
(ties: the tenant served longest ago), so one tenant's 300 queued jobs delay another tenant's first
job by at most one job length, not by the whole backlog. A tenant at ``running_cap`` running jobs is
skipped until one of its jobs ends (other tenants' jobs run meanwhile; if no one else waits, the
worker waits too: that is the room kept for others). Pure asyncio, no I/O.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque


class FairQueue:
    def __init__(self, running_cap: int) -> None:
        self.running_cap = running_cap
        self._fifos: dict[str, deque[str]] = {}
        self._live: dict[str, str] = {}  # job id -> tenant, for jobs waiting (not taken, not discarded)
        self._queued: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self._served: dict[str, int] = {}  # tenant -> when it was last served (a tie-breaker)
        self._clock = itertools.count()
        self._changed = asyncio.Event()

    def empty(self) -> bool:
        return not self._live

    def queued(self, tenant: str) -> int:
        return self._queued[tenant]

    def running(self, tenant: str) -> int:
        return self._running[tenant]

    def put(self, tenant: str, job_id: str) -> None:
        if job_id not in self._live:
            self._live[job_id] = tenant
            self._queued[tenant] += 1
        self._fifos.setdefault(tenant, deque()).append(job_id)
        self._changed.set()

    def discard(self, job_id: str) -> None:
        """A queued job that will not run (cancelled); its stale FIFO entry is skipped later."""
        tenant = self._live.pop(job_id, None)
        if tenant is not None:
            self._queued[tenant] -= 1

    def done(self, tenant: str) -> None:
        """A job taken with ``get`` has ended."""
        self._running[tenant] -= 1
        self._changed.set()

    async def get(self) -> tuple[str, str]:
        """Wait for the next job: ``(tenant, job_id)``, counted as running until ``done(tenant)``."""
        while True:
            picked = self._pick()
            if picked is not None:
                return picked
            self._changed.clear()
            await self._changed.wait()

    def _pick(self) -> tuple[str, str] | None:
        best: str | None = None
        for tenant, fifo in list(self._fifos.items()):
            while fifo and fifo[0] not in self._live:
                fifo.popleft()  # discarded, or a duplicate of an entry already taken
            if not fifo:
                del self._fifos[tenant]
                continue
            if self._running[tenant] >= self.running_cap:
                continue
            key = (self._running[tenant], self._served.get(tenant, -1))
            if best is None or key < (self._running[best], self._served.get(best, -1)):
                best = tenant
        if best is None:
            return None
        job_id = self._fifos[best].popleft()
        del self._live[job_id]
        self._queued[best] -= 1
        self._running[best] += 1
        self._served[best] = next(self._clock)
        return best, job_id
