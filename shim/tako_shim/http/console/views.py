"""Pure pieces of the console's pages: filter parsing, record matching, the activity chart, formatting.

No I/O here: the route handlers (``routes.py``) fetch from the backend interface and pass the data in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tako_vm.models.sessions import SessionInfo
from tako_vm.models.wire import TERMINAL_STATUSES, ArtifactInfo, ExecutionRecordFull

PAGE_SIZE = 25
STATUSES = ("queued", "running", "succeeded", "failed", "timeout", "oom", "cancelled")
# Images shown inline (as <img>, under the console's CSP: an SVG's scripts never run in an <img>).
INLINE_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}
MAX_FILTER_TEXT = 200
MAX_PAGE = 10_000
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class FilterError(ValueError):
    """A filter value the console cannot use; the message names the field."""


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    job_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None  # text searched in the code
    page: int = 1
    problems: tuple[str, ...] = field(default=())
    session_id: str | None = None  # only the executions of this session (the backend filters)

    @property
    def scans(self) -> bool:
        """True when the backend cannot filter by itself (time range, code search): the console scans."""
        return self.since is not None or self.until is not None or bool(self.q)

    def query(self, **changes: Any) -> dict[str, str]:
        """The filters as query parameters (for links to other pages of the same list)."""
        values = {
            "status": self.status or "",
            "job_type": self.job_type or "",
            "since": _local_input(self.since),
            "until": _local_input(self.until),
            "q": self.q or "",
            "session_id": self.session_id or "",
            "page": str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


def _local_input(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M") if value else ""


def _time(name: str, raw: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise FilterError(f"{name}: {raw[:40]!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_filters(query: Mapping[str, str]) -> Filters:
    """Filters from the query string; unusable values are dropped and reported in ``problems``."""
    problems: list[str] = []
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        problems.append(f"status: {status[:40]!r} is not one of {', '.join(STATUSES)}")
        status = None
    job_type = (query.get("job_type") or "").strip()[:64] or None
    times: dict[str, datetime | None] = {"since": None, "until": None}
    for name in times:
        raw = (query.get(name) or "").strip()
        if raw:
            try:
                times[name] = _time(name, raw)
            except FilterError as exc:
                problems.append(str(exc))
    q = (query.get("q") or "").strip()
    if len(q) > MAX_FILTER_TEXT:
        problems.append(f"q: longer than {MAX_FILTER_TEXT} characters; cut")
        q = q[:MAX_FILTER_TEXT]
    page_raw = query.get("page") or "1"
    page = int(page_raw) if page_raw.isdigit() and 1 <= int(page_raw) <= MAX_PAGE else 1
    if page_raw != "1" and str(page) != page_raw:
        problems.append(f"page: must be a whole number from 1 to {MAX_PAGE}")
    session_id = (query.get("session_id") or "").strip() or None
    if session_id is not None and not SESSION_ID.match(session_id):
        problems.append(f"session_id: {session_id[:40]!r} is not a session id (1-128 of A-Z a-z 0-9 _ -)")
        session_id = None
    return Filters(
        status, job_type, times["since"], times["until"], q or None, page, tuple(problems), session_id
    )


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def in_range(record: ExecutionRecordFull, filters: Filters) -> bool:
    created = parse_time(record.created_at)
    if created is None:
        return filters.since is None and filters.until is None
    if filters.since is not None and created < filters.since:
        return False
    return not (filters.until is not None and created > filters.until)


def code_matches(code: str, q: str | None) -> bool:
    return not q or q.casefold() in code.casefold()


def first_line(code: str, width: int = 80) -> str:
    for line in code.splitlines():
        if line.strip():
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


def image_type(artifact: ArtifactInfo) -> str | None:
    """The image MIME type to show an artifact inline with, or ``None`` (decided by the name's suffix)."""
    name = artifact.name.lower()
    for suffix, mime in INLINE_IMAGE_TYPES.items():
        if name.endswith(suffix):
            return mime
    return None


def is_terminal(record: ExecutionRecordFull) -> bool:
    return record.status in TERMINAL_STATUSES


# -- the overview's activity chart ---------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: int
    height_all: int
    height_failed: int
    label: str


@dataclass(frozen=True)
class Activity:
    per_minute: list[tuple[int, int]]  # (jobs, failed) per minute, oldest first, 60 entries
    total: int
    finished: int
    failed: int
    bars: list[Bar]
    chart_height: int
    truncated: bool  # more records were in the hour than the scan read

    @property
    def jobs_per_minute(self) -> float:
        return self.total / len(self.per_minute) if self.per_minute else 0.0

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


FAILED_STATUSES = frozenset({"failed", "timeout", "oom"})


def activity(
    records: Iterable[ExecutionRecordFull], now: datetime, minutes: int = 60, truncated: bool = False
) -> Activity:
    """Jobs created per minute over the last ``minutes``, and how many failed (failed, timeout, oom)."""
    start = now - timedelta(minutes=minutes)
    counts = [[0, 0] for _ in range(minutes)]
    total = finished = failed = 0
    for record in records:
        created = parse_time(record.created_at)
        if created is None or not start <= created <= now:
            continue
        slot = min(minutes - 1, int((created - start).total_seconds() // 60))
        counts[slot][0] += 1
        total += 1
        if record.status in TERMINAL_STATUSES:
            finished += 1
        if record.status in FAILED_STATUSES:
            counts[slot][1] += 1
            failed += 1
    height = 60
    peak = max((c[0] for c in counts), default=0) or 1
    bars = [
        Bar(
            x=i * 5,
            height_all=round(jobs * height / peak),
            height_failed=round(bad * height / peak),
            label=f"{(start + timedelta(minutes=i)).strftime('%H:%M')} UTC: {jobs} jobs, {bad} failed",
        )
        for i, (jobs, bad) in enumerate(counts)
    ]
    return Activity(
        per_minute=[(c[0], c[1]) for c in counts],
        total=total,
        finished=finished,
        failed=failed,
        bars=bars,
        chart_height=height,
        truncated=truncated,
    )


# -- sessions ------------------------------------------------------------------------------------

ENDED_SESSIONS_SHOWN = 20


def split_sessions(items: Iterable[SessionInfo]) -> tuple[list[SessionInfo], list[SessionInfo]]:
    """(open sessions newest first, the most recently ended ones) of one tenant's list."""
    listed = list(items)
    open_ = sorted((s for s in listed if s.status != "ended"), key=lambda s: s.created_at, reverse=True)
    ended = sorted(
        (s for s in listed if s.status == "ended"), key=lambda s: s.ended_at or s.created_at, reverse=True
    )
    return open_, ended[:ENDED_SESSIONS_SHOWN]


def session_mark(info: SessionInfo, shown: int, has_more: bool) -> str:
    """What a session page shows, as a short token: its status and the executions it accounts for.

    The live page polls with the token it was rendered with; the same token means nothing changed
    (the poll costs one lookup and no query). A row not yet written when ``executions`` already counts
    it gives a different token, so the next poll renders again."""
    return f"{info.status}.{info.executions if has_more else shown}"


def session_unchanged(info: SessionInfo, mark: str | None) -> bool:
    return mark is not None and mark == f"{info.status}.{info.executions}"
