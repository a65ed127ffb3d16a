"""The one interface the REST routes talk to; ``local`` and ``kubernetes`` implement it.

Every method takes the tenant (resolved from the API key; a namespace in the cluster). A backend
never returns or touches another tenant's job: a job of another tenant is ``NotFound``.
Errors are raised as ``tako_shim.errors`` types (``NotFound``, ``Conflict``, ``BadRequest``,
``InvalidRequest``, ``Unavailable``); the HTTP layer translates them once.

Semantics every backend keeps (and ``tests/integration/test_shim_*.py`` checks for ``local``):
- ``submit`` with an idempotency key: same key + same fingerprint (``jobs.submission_fingerprint``)
  returns the existing job and its current status; same key + different fingerprint raises
  ``Conflict("Idempotency key reused with different payload")``. Keys are scoped per tenant.
  A submission rejected because the queue is full (``Unavailable``) does not burn the key.
- ``rerun``/``fork`` keep the parent's requirements, timeouts and job type unless overridden.
- ``wait_for`` wakes on completion (no sleep loops) and returns ``None`` when ``timeout`` expires.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from tako_shim.backends.events import Cursor, EventSource, JobEvent, OutputLog, job_events
from tako_shim.config import Settings
from tako_shim.errors import BadRequest
from tako_shim.metrics import Gauges, ShimMetrics
from tako_shim.submission import JobResolver, Overrides, Submission
from tako_vm.models.wire import (
    TERMINAL_STATUSES,
    ExecutionRecordFull,
    HealthResponse,
    JobStatusResponse,
    JobTypeResponse,
    QueueStatsResponse,
    QueueStatus,
)

__all__ = [
    "Artifact",
    "Backend",
    "Cursor",
    "JobEvent",
    "Overrides",
    "RecordFilter",
    "RecordPage",
    "Submission",
    "SubmitResult",
]


DEAD_LETTER_SCAN = 1000
INFRASTRUCTURE_ERRORS = frozenset({"internal_error", "service_unavailable", "config_error"})


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    status: QueueStatus
    created: bool  # False: an idempotent replay of an existing job


@dataclass(frozen=True)
class RecordFilter:
    status: str | None = None
    job_type: str | None = None
    session_id: str | None = None  # only the executions of this session (docs/sessions.md)
    limit: int = 100
    offset: int = 0
    # Outputs whose JSON is longer are left out of the page (a backend may ignore this; None: keep all).
    inline_output_bytes: int | None = None


@dataclass(frozen=True)
class RecordPage:
    records: list[ExecutionRecordFull]
    has_more: bool
    omitted_outputs: dict[str, int] = field(default_factory=dict)  # execution id -> output JSON bytes


@dataclass(frozen=True)
class Artifact:
    name: str
    content: bytes
    sha256: str
    content_type: str = "application/octet-stream"


class Backend(ABC):
    """Runs and records jobs. ``start`` before use, ``close`` on shutdown."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resolver = JobResolver(settings)
        self.metrics = ShimMetrics()  # served at GET /metrics (docs/metrics.md)
        self.metrics.gauges = self.metric_gauges

    def metric_gauges(self) -> Gauges:
        """Queue depth, running jobs, open sessions as this process knows them now, without I/O (a scrape
        must stay cheap); a backend that would have to ask elsewhere leaves them ``None``."""
        return Gauges()

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def prepare(self, tenant: str, submission: Submission) -> Submission:
        """Complete a resolved submission with what only the backend knows (before ``submit``)."""
        return submission

    @abstractmethod
    async def submit(self, tenant: str, submission: Submission) -> SubmitResult: ...

    @abstractmethod
    async def get_status(self, tenant: str, job_id: str) -> JobStatusResponse: ...

    @abstractmethod
    async def get_record(self, tenant: str, job_id: str) -> ExecutionRecordFull: ...

    @abstractmethod
    async def get_submission(self, tenant: str, job_id: str) -> Submission:
        """What the job was submitted with (code, input, resolved job type, timeouts, requirements)."""

    @abstractmethod
    async def wait_for(self, tenant: str, job_id: str, wait_seconds: float) -> ExecutionRecordFull | None:
        """The terminal record, or ``None`` if ``wait_seconds`` pass first (``NotFound`` if unknown)."""

    @abstractmethod
    async def list_records(self, tenant: str, query: RecordFilter) -> RecordPage: ...

    @abstractmethod
    async def cancel(self, tenant: str, job_id: str) -> None:
        """Cancel a queued or running job; ``NotFound`` if unknown or already finished."""

    @abstractmethod
    async def get_artifact(self, tenant: str, job_id: str, name: str) -> Artifact: ...

    @abstractmethod
    async def pool_stats(self, tenant: str) -> QueueStatsResponse: ...

    @abstractmethod
    async def health(self) -> HealthResponse: ...

    async def rerun(self, tenant: str, job_id: str, overrides: Overrides) -> SubmitResult:
        """Same code and input as the parent, which must be finished (else ``BadRequest``)."""
        record = await self.get_record(tenant, job_id)
        if record.status not in TERMINAL_STATUSES:
            raise BadRequest("Cannot rerun job that hasn't completed")
        parent = await self.get_submission(tenant, job_id)
        return await self.submit(tenant, self.resolver.derive(parent, job_id, "rerun", overrides))

    async def fork(self, tenant: str, job_id: str, overrides: Overrides) -> SubmitResult:
        """``overrides.code`` on the parent's input, keeping the parent's settings unless overridden."""
        parent = await self.get_submission(tenant, job_id)
        return await self.submit(tenant, self.resolver.derive(parent, job_id, "fork", overrides))

    async def dead_letters(self, tenant: str, error_type: str | None = None) -> list[ExecutionRecordFull]:
        """Failed records whose error is infrastructure, not user code (newest first, last 1000 failures).

        There is no separate dead-letter table: the records are the truth, this is a view over them.
        """
        page = await self.list_records(tenant, RecordFilter(status="failed", limit=DEAD_LETTER_SCAN))
        wanted = {error_type} if error_type else INFRASTRUCTURE_ERRORS
        return [r for r in page.records if r.error is not None and r.error.type in wanted]

    def live_output(self, job_id: str) -> OutputLog | None:
        """The running job's output so far, when this process sees it as it is produced."""
        return None

    async def events(self, tenant: str, job_id: str, cursor: Cursor) -> AsyncGenerator[JobEvent, None]:
        """The job's event stream beyond ``cursor`` (``tako_shim.backends.events``); NotFound if unknown."""

        async def status() -> str:
            current = (await self.get_status(tenant, job_id)).status
            return "queued" if current == "pending" else current

        async def wait(seconds: float) -> None:
            await self.wait_for(tenant, job_id, seconds)

        source = EventSource(
            job_id, status, lambda: self.get_record(tenant, job_id), lambda: self.live_output(job_id), wait
        )
        async for event in job_events(source, cursor):
            yield event

    async def job_types(self, tenant: str) -> list[JobTypeResponse]:
        """The job types a tenant may use (from configuration; a backend may add its own)."""
        return self.resolver.job_types()
