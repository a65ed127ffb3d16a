"""Live output of local session calls: the tail of the runner's ``live-<n>`` file, and the calls this
process knows (queued, running, recently finished) for ``GET /sessions/{id}/executions/{eid}/events``.

The runner appends ``TAKO-LIVE <stream> <JSON string>`` lines to ``out/live-<n>`` as the cell writes
(``tako_runner/session.py``); ``LiveTail`` reads what is new, without following links or blocking on
a FIFO (the directory is the sandbox's), and never more than ``limit`` bytes in all. Each tracked call
has a ``LiveOutput`` capped like the record, so a stream's chunks add up to the record's text.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tako_shim.backends.events import Cursor, EventSource, JobEvent, job_events
from tako_shim.backends.live import LiveLines, LiveOutput
from tako_vm.models.sessions import SessionExecution

READ_CHUNK_BYTES = 256 * 1024
MAX_FINISHED_KEPT = 256  # finished calls kept in memory; older ones stream from the job history
MAX_FINISHED_CHARS = 32 * 1024 * 1024  # and at most this much of their output in all


class LiveTail:
    """New live lines of one ``live-<n>`` file, read from where the last read stopped."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit  # bytes read at most (a cell's kept output, JSON-escaped, with room)
        self.offset = 0
        self.lines = LiveLines()

    def read(self) -> list[tuple[str, str]]:
        if self.offset >= self.limit:
            return []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            data = os.pread(fd, min(READ_CHUNK_BYTES, self.limit - self.offset), self.offset)
        except OSError:
            return []
        finally:
            os.close(fd)
        self.offset += len(data)
        return self.lines.feed(data)

    def pump(self, live: LiveOutput) -> None:
        """Everything new into ``live`` (until the file has nothing more)."""
        while True:
            before = self.offset
            for stream, text in self.read():
                live.append(stream, text)
            if self.offset == before:
                return


@dataclasses.dataclass
class Tracked:
    """One call this process knows: its live output while it runs, its reply once it ended."""

    tenant: str
    session_id: str
    execution_id: str
    live: LiveOutput
    status: str = "queued"  # queued | running | the reply's status
    execution: SessionExecution | None = None
    dropped: bool = False  # refused or cancelled before it ran: its open streams end

    def set_status(self, status: str) -> None:
        self.status = status
        self.live.notify()

    def finished(self, execution: SessionExecution) -> None:
        """The reply is the truth from now on: the live chunks are dropped (streams cut the rest of
        the output from the reply; their loop sees the final status before it reads chunks again)."""
        self.execution = execution
        self.status = execution.status
        self.live.close()
        self.live.chunks.clear()

    def size(self) -> int:
        return len(self.execution.stdout) + len(self.execution.stderr) if self.execution else 0


class TrackedCalls:
    """The calls of this process by execution id: every unfinished one, the last finished ones."""

    def __init__(self, keep: int = MAX_FINISHED_KEPT, chars: int = MAX_FINISHED_CHARS) -> None:
        self.keep = keep
        self.chars = chars
        self.calls: collections.OrderedDict[str, Tracked] = collections.OrderedDict()

    def get(self, execution_id: str) -> Tracked | None:
        return self.calls.get(execution_id)

    def add(self, tracked: Tracked) -> None:
        self.calls[tracked.execution_id] = tracked
        self._trim()

    def drop(self, tracked: Tracked) -> None:
        if self.calls.get(tracked.execution_id) is tracked:
            del self.calls[tracked.execution_id]
        tracked.dropped = True
        tracked.live.notify()

    def finished(self, tracked: Tracked, execution: SessionExecution) -> None:
        tracked.finished(execution)
        self.calls.move_to_end(tracked.execution_id)
        self._trim()

    def _trim(self) -> None:
        """Forget the oldest finished calls beyond ``keep`` of them or ``chars`` of output."""
        done = [t for t in self.calls.values() if t.execution is not None]
        total = sum(t.size() for t in done)
        for index, tracked in enumerate(done):
            if len(done) - index <= self.keep and total <= self.chars:
                break
            total -= tracked.size()
            del self.calls[tracked.execution_id]


class _Dropped(Exception):
    pass


async def stream(tracked: Tracked, cursor: Cursor, poll_seconds: float = 1.0) -> AsyncIterator[JobEvent]:
    """The events of a tracked call beyond ``cursor`` (``tako_shim.backends.events.job_events``); a
    call dropped before it ran ends its streams without a result (a reconnect gets 404)."""

    async def status() -> str:
        if tracked.dropped:
            raise _Dropped
        return tracked.status

    async def record() -> SessionExecution:
        assert tracked.execution is not None
        return tracked.execution

    source = EventSource(
        tracked.execution_id, status, record, lambda: tracked.live, tracked.live.changed, ident=ident(tracked)
    )
    with contextlib.suppress(_Dropped):
        async for event in job_events(source, cursor, poll_seconds):
            yield event


def ident(tracked: Tracked | SessionExecution) -> dict[str, str]:
    return {"session_id": tracked.session_id, "execution_id": tracked.execution_id}


def replay(execution: SessionExecution, cursor: Cursor) -> list[JobEvent]:
    """A finished call's events beyond ``cursor``: the rest of its output, status, result."""
    from tako_shim.backends.events import finish

    return finish(ident(execution), execution, cursor)


def execution_from_row(row: Any) -> SessionExecution:
    """A session call's reply rebuilt from its job-history row (``sessions.session_row``)."""
    outcome = row.outcome or {}
    error = outcome.get("error")
    if isinstance(error, dict):
        error = {"type": error.get("type") or "error", "message": error.get("message") or ""}
    return SessionExecution(
        execution_id=row.job_id,
        session_id=row.parent_execution_id,
        status=row.status,
        stdout=str(outcome.get("stdout") or ""),
        stderr=str(outcome.get("stderr") or ""),
        result=outcome.get("session_result"),
        error=error if isinstance(error, dict) else None,
        duration_ms=row.duration_ms,
    )
