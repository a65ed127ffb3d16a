"""The live event stream of one job (``GET /jobs/{job_id}/events``), shared by both backends.

Events, in order: ``status`` on every transition (``{"job_id", "status"}``), ``stdout``/``stderr`` chunks
(``{"text"}``) in the order the code wrote them, then the terminal ``status`` and one ``result`` (the full
record). Every event's ``id`` is a cursor ``<status>.<stdout chars>.<stderr chars>``: how far the client
got in each part (status 1 queued, 2 running, 3 finished, 4 result). A client that reconnects with
``Last-Event-ID`` gets exactly what lies beyond it, on any replica and before or after the job ended: the
concatenated chunks of a stream are the record's ``stdout``/``stderr`` text (same cap, same notice), so a
finished job streams the rest of its stored output.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tako_shim.errors import InvalidRequest
from tako_vm.models.wire import TERMINAL_STATUSES

STREAMS = ("stdout", "stderr")
QUEUED, RUNNING, FINISHED, RESULT = 1, 2, 3, 4
_CURSOR = re.compile(r"^([0-4])\.([0-9]{1,12})\.([0-9]{1,12})$")


@dataclass(frozen=True)
class Cursor:
    status: int = 0
    stdout: int = 0
    stderr: int = 0

    @classmethod
    def parse(cls, value: str | None) -> Cursor:
        if not value:
            return cls()
        match = _CURSOR.match(value.strip())
        if match is None:
            raise InvalidRequest(
                f"Last-Event-ID: {value[:60]!r} is not an event id of this stream "
                "(<status>.<stdout chars>.<stderr chars>)"
            )
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.status}.{self.stdout}.{self.stderr}"

    def offset(self, stream: str) -> int:
        return self.stdout if stream == "stdout" else self.stderr

    def advanced(self, stream: str, chars: int) -> Cursor:
        if stream == "stdout":
            return Cursor(self.status, self.stdout + chars, self.stderr)
        return Cursor(self.status, self.stdout, self.stderr + chars)


@dataclass(frozen=True)
class JobEvent:
    event: str  # status | stdout | stderr | result
    data: dict[str, Any]
    id: str


def status_rank(status: str) -> int:
    if status in TERMINAL_STATUSES:
        return FINISHED
    return RUNNING if status == "running" else QUEUED


class OutputLog(Protocol):
    """A running job's output as it is produced (``tako_shim.backends.live.LiveOutput``)."""

    chunks: list[tuple[str, int, str]]  # (stream, start offset, text), append-only
    closed: bool

    async def changed(self, seconds: float) -> None:
        """Return after the next append or close, or after ``seconds``."""


def output_beyond(
    cursor: Cursor, chunks: list[tuple[str, int, str]], start: int
) -> tuple[list[JobEvent], Cursor]:
    """Events for the chunks from index ``start`` on that lie beyond ``cursor`` (parts of a chunk too)."""
    events = []
    for stream, begin, text in chunks[start:]:
        seen = cursor.offset(stream)
        if begin + len(text) <= seen:
            continue
        part = text[max(seen - begin, 0) :]
        cursor = cursor.advanced(stream, len(part))
        events.append(JobEvent(stream, {"text": part}, str(cursor)))
    return events, cursor


class FinishedRecord(Protocol):
    """What a finished stream's ``result`` carries: a job's record or a session execution."""

    @property
    def status(self) -> str: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


def finish(job_id: str | dict[str, str], record: FinishedRecord, cursor: Cursor) -> list[JobEvent]:
    """What a finished job still owes a client at ``cursor``: the rest of its stored output, the terminal
    status and the result. ``job_id``: the job's id, or the ``status`` events' identifying fields."""
    ident = {"job_id": job_id} if isinstance(job_id, str) else job_id
    events: list[JobEvent] = []
    for stream in STREAMS:
        text: str = getattr(record, stream)
        seen = cursor.offset(stream)
        if len(text) > seen:
            cursor = cursor.advanced(stream, len(text) - seen)
            events.append(JobEvent(stream, {"text": text[seen:]}, str(cursor)))
    if cursor.status < FINISHED:
        cursor = Cursor(FINISHED, cursor.stdout, cursor.stderr)
        events.append(JobEvent("status", {**ident, "status": record.status}, str(cursor)))
    if cursor.status < RESULT:
        cursor = Cursor(RESULT, cursor.stdout, cursor.stderr)
        events.append(JobEvent("result", record.model_dump(mode="json"), str(cursor)))
    return events


@dataclass(frozen=True)
class EventSource:
    """What ``job_events`` needs from a backend for one job."""

    job_id: str
    status: Callable[[], Awaitable[str]]  # the current status (raises NotFound)
    record: Callable[[], Awaitable[FinishedRecord]]
    live: Callable[[], OutputLog | None]  # the running job's output so far, if this process has it
    wait: Callable[[float], Awaitable[None]]  # returns after a change or after at most that many seconds
    ident: dict[str, str] | None = None  # the status events' fields (default ``{"job_id": job_id}``)


async def job_events(
    source: EventSource, cursor: Cursor, poll_seconds: float = 1.0
) -> AsyncIterator[JobEvent]:
    """The events beyond ``cursor`` until (and including) the ``result`` event."""
    live: OutputLog | None = None
    index = 0
    ident = source.ident or {"job_id": source.job_id}
    while cursor.status < RESULT:
        status = await source.status()
        rank = status_rank(status)
        if rank == FINISHED:
            for event in finish(ident, await source.record(), cursor):
                yield event
            return
        if rank > cursor.status:
            cursor = Cursor(rank, cursor.stdout, cursor.stderr)
            yield JobEvent("status", {**ident, "status": status}, str(cursor))
        current = source.live()
        if current is not live:
            live, index = current, 0
        if live is not None:
            events, cursor = output_beyond(cursor, live.chunks, index)
            index = len(live.chunks)
            for event in events:
                yield event
            if not live.closed:
                await live.changed(poll_seconds)
                continue
        await source.wait(poll_seconds)
