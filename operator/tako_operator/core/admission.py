"""Admission: which PythonJobs may hold one of the operator's `max_concurrent` slots (pure).

A job holds a slot from admission until it reaches a terminal phase. Waiting jobs are admitted in
creation order (creationTimestamp, then namespace/name to break ties), never out of turn.

`Admission` keeps the in-memory half of the state: decisions taken but not yet visible in the
watched status. The durable half is each job's `status.attempts` (> 0 means it was admitted), so a
restarted operator recovers every slot from the cluster before it admits anything new.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tako_operator.core.plan import TERMINAL_PHASES

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Entry:
    """A job as admission sees it. Equality covers every field: kopf's index keeps a new value only
    when it differs from the stored one."""

    created: str
    namespace: str
    name: str
    admitted: bool
    terminal: bool
    phase: str = ""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


def entry_for(job: dict[str, Any]) -> Entry:
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    phase = str(status.get("phase") or "")
    return Entry(
        created=str(meta.get("creationTimestamp") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        admitted=int(status.get("attempts") or 0) > 0,
        terminal=phase in TERMINAL_PHASES,
        phase=phase,
    )


def admissible(entries: Iterable[Entry], granted: set[Key], released: set[Key], limit: int) -> list[Key]:
    """Keys to admit now, oldest first, so that at most `limit` jobs hold a slot.

    `granted`: admitted in memory, possibly not yet visible in `entries`; `released`: finished in
    memory, possibly not yet visible as terminal.
    """
    live = [e for e in entries if not e.terminal and e.key not in released]
    holding = {e.key for e in live if e.admitted} | (granted - released)
    free = limit - len(holding)
    waiting = sorted((e for e in live if e.key not in holding), key=lambda e: e.order)
    return [e.key for e in waiting[: max(free, 0)]]


@dataclass
class Admission:
    limit: int
    granted: set[Key] = field(default_factory=set)
    released: set[Key] = field(default_factory=set)

    def decide(self, key: Key, entries: Iterable[Entry]) -> bool:
        """Is `key` admitted? Records the grant so a concurrent decision sees the slot taken."""
        snapshot = list(entries)
        known = False
        for entry in snapshot:
            if entry.key == key:
                if entry.admitted and not entry.terminal:
                    return True
                known = known or not entry.terminal
        if key in self.granted:
            return True
        if known and key not in self.released and len(snapshot) + len(self.granted) <= self.limit:
            # Every job fits (each live job can hold a slot): no ordering needed. Saves sorting every
            # entry on every pass, O(N log N) per pass under a burst (18% of the event loop, profiled).
            self.granted.add(key)
            return True
        if key in admissible(snapshot, self.granted, self.released, self.limit):
            self.granted.add(key)
            return True
        return False

    def prune(self, entries: Iterable[Entry]) -> None:
        """Drop in-memory marks that the watched state now shows on its own."""
        for entry in entries:
            if entry.admitted:
                self.granted.discard(entry.key)
            if entry.terminal:
                self.released.discard(entry.key)

    def release(self, key: Key) -> None:
        self.granted.discard(key)
        self.released.add(key)

    def forget(self, key: Key) -> None:
        """The job object is gone: drop every trace of it."""
        self.granted.discard(key)
        self.released.discard(key)

    def next_up(self, entries: Iterable[Entry]) -> list[Key]:
        """The waiting jobs that free slots would admit now, oldest first (what to wake)."""
        return admissible(entries, self.granted, self.released, self.limit)

    def waiting(self, entries: Iterable[Entry]) -> list[Key]:
        """Non-admitted, non-terminal jobs in admission order (the queue)."""
        live = [e for e in entries if not e.terminal and e.key not in self.released]
        return [
            e.key for e in sorted(live, key=lambda e: e.order) if not e.admitted and e.key not in self.granted
        ]
