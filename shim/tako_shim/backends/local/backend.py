"""The local backend: a bounded pool of asyncio workers running each job in its own runsc sandbox.

- The queue holds at most ``max_queue_size`` waiting jobs (then ``Unavailable`` -> 503); ``max_workers``
  worker tasks take jobs in submission order. ``/execute`` (sync) goes through the same queue.
- History lives in SQLite under ``data_dir`` and survives restarts: at start-up, jobs that were queued
  or running are queued again (nothing is marked ``interrupted`` because the process restarted).
- Long-poll waiters wait on an ``asyncio.Event`` per job, set when the job's terminal row is written.
- Sandbox failures that are not the user's (the executor raising) are retried up to
  ``max_retry_attempts`` times, then recorded as ``failed``/``internal_error``.
- Storage faults (``StorageBusy``: database locked; ``StorageFull``: disk full) reach clients as 503s from
  the boundary. A worker never dies of one and never loses a finished job's outcome: the outcome is
  served from memory at once and its terminal write is retried with backoff until it lands (or, after
  ``TERMINAL_WRITE_GIVE_UP_SECONDS``, stays in memory and the job re-runs at the next start).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import itertools
import logging
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from tako_shim.backends.base import (
    Artifact,
    Backend,
    RecordFilter,
    RecordPage,
    Submission,
    SubmitResult,
)
from tako_shim.backends.live import LiveOutput
from tako_shim.backends.local import records
from tako_shim.backends.local.deliveries import DeliveryTable, LocalDeliveries, new_delivery
from tako_shim.backends.local.fairqueue import FairQueue
from tako_shim.backends.local.health_details import health_details
from tako_shim.backends.local.store import JobRow, JobStore
from tako_shim.config import Settings, memory_limit_mb
from tako_shim.errors import (
    BackendStartError,
    BadRequest,
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    RateLimited,
    StorageUnavailable,
    Unavailable,
)
from tako_shim.metrics import Gauges
from tako_shim.submission import canonical_json, sha256_hex
from tako_shim.webhooks.dispatcher import Dispatcher, accepted_url
from tako_vm import __version__
from tako_vm.models.wire import (
    TERMINAL_STATUSES,
    CircuitBreakerStatus,
    ExecutionRecordFull,
    HealthResponse,
    JobStatusResponse,
    QueueStatsResponse,
    QueueStatus,
    WebhookDelivery,
)

log = logging.getLogger(__name__)

QUEUE_FULL = "Job queue is full. Try again later."
IDEMPOTENCY_CONFLICT = "Idempotency key reused with different payload"
RETENTION_INTERVAL_SECONDS = 3600
USAGE_MAX_AGE_SECONDS = 60.0
# A terminal write that meets a locked database or a full disk is retried with doubling delays (capped)
# for this long; a lock outlasting it is an outage, logged as an error.
TERMINAL_WRITE_FIRST_DELAY_SECONDS = 0.5
TERMINAL_WRITE_MAX_DELAY_SECONDS = 10.0
TERMINAL_WRITE_GIVE_UP_SECONDS = 600.0
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TerminalState:
    """A finished job's outcome, kept in memory until its row is written."""

    status: str
    ended_at: str
    duration_ms: int | None
    outcome: dict[str, Any]

    def applied_to(self, row: JobRow) -> JobRow:
        if row.status in TERMINAL_STATUSES:
            return row  # the row is already written (terminal rows never change)
        return dataclasses.replace(
            row,
            status=self.status,
            ended_at=self.ended_at,
            duration_ms=self.duration_ms,
            outcome=self.outcome,
        )


class PendingOrder:
    """The jobs waiting for a worker, in queue order, with an O(log n) position lookup.

    ``GET /jobs/{id}`` reports a queued job's position on every poll; a scan of the queue would cost
    O(queue length) per poll on the event loop (0.4 ms at 1,000 queued, 2.7 ms at 10,000 on this
    machine, measured), i.e. O(Q^2) when every waiting client polls. Each job gets an increasing
    ticket when it joins, so the list of live tickets stays sorted by appending, and a position is a
    binary search. Leaving (a worker takes the head, a cancel removes one) is a C-level list delete.
    """

    def __init__(self) -> None:
        self._ticket_of: dict[str, int] = {}
        self._tickets: list[int] = []  # sorted: tickets only grow
        self._next_ticket = itertools.count()

    def __len__(self) -> int:
        return len(self._ticket_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ticket_of

    def add(self, job_id: str) -> None:
        """Join at the back (a job already waiting keeps its place)."""
        if job_id not in self._ticket_of:
            ticket = next(self._next_ticket)
            self._ticket_of[job_id] = ticket
            self._tickets.append(ticket)

    def remove(self, job_id: str) -> None:
        ticket = self._ticket_of.pop(job_id)
        del self._tickets[bisect.bisect_left(self._tickets, ticket)]

    def position(self, job_id: str) -> int | None:
        """1-based place in the queue, or None if the job is not waiting."""
        ticket = self._ticket_of.get(job_id)
        return None if ticket is None else bisect.bisect_left(self._tickets, ticket) + 1


class SandboxRunner(Protocol):
    """What the backend needs from ``tako_shim.backends.local.sandbox.executor.LocalExecutor``."""

    def runtime_info(self) -> dict[str, Any]: ...

    async def run(self, job: Any, artifact_dir: Path, cancel: asyncio.Event | None = None) -> Any: ...


def _real_executor(settings: Settings) -> SandboxRunner:
    from tako_shim.backends.local.sandbox.executor import LocalExecutor

    local = LocalExecutor(
        work_dir=settings.data_dir / "work",
        security_mode=settings.security_mode,
        runsc_path=settings.runsc_path,
        rootfs_path=settings.rootfs_path,
        requirements_cache_mb=settings.requirements_cache_max_mb,
        requirements_cache_shared=settings.requirements_cache_shared,
        snapshot_dir=settings.data_dir / "snapshots" if settings.snapshots_enabled else None,
        snapshot_max_age_s=settings.snapshot_max_age_seconds,
    )
    if settings.warm_pool_size > 0:
        from tako_shim.backends.local.sandbox.warmpool import warm_pool_for

        return warm_pool_for(local, settings)
    executor: SandboxRunner = local
    return executor


def _validate_requirements(requirements: list[str]) -> None:
    from tako_shim.backends.local.sandbox.executor import validate_requirements

    validate_requirements(requirements)


def _sandbox_job(
    settings: Settings, row: JobRow, environment: dict[str, str], jt_memory: str, cpu: float
) -> Any:
    from tako_shim.backends.local.sandbox.executor import SandboxJob

    return SandboxJob(
        job_id=row.job_id,
        code=row.code,
        input_data=row.input_data,
        requirements=row.requirements,
        timeout=row.timeout,
        startup_timeout=row.startup_timeout,
        tenant=row.tenant,
        memory_limit_mb=memory_limit_mb(jt_memory),
        cpu_limit=cpu,
        environment=environment,
        max_stdout_bytes=settings.max_stdout_bytes,
        max_stderr_bytes=settings.max_stderr_bytes,
        max_artifact_bytes=settings.max_artifact_bytes,
        max_total_artifact_bytes=settings.max_total_artifacts_bytes,
        max_artifact_count=settings.max_artifact_count,
    )


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        settings: Settings,
        executor_factory: Callable[[Settings], SandboxRunner] = _real_executor,
        job_factory: Callable[..., Any] | None = None,
        validate_requirements: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``executor_factory``/``job_factory`` exist for queue unit tests; production uses runsc."""
        super().__init__(settings)
        self.store = JobStore(settings.data_dir / "tako_vm.sqlite3")
        self._executor_factory = executor_factory
        self._job_factory = job_factory or _sandbox_job
        self._validate_requirements = validate_requirements or _validate_requirements
        self._executor: SandboxRunner | None = None
        self._runtime_info: dict[str, Any] = {}
        self._tenant_queued_cap, running_cap = settings.tenant_caps()
        self._queue = FairQueue(running_cap)  # per-tenant FIFOs, fewest-running tenant first
        self._pending = PendingOrder()  # jobs waiting for a worker, with their queue positions
        self._cancels: dict[str, asyncio.Event] = {}  # running job -> its cancel switch
        self._done: dict[str, asyncio.Event] = {}  # job -> event set once its terminal state is known
        self._unsaved: dict[str, TerminalState] = {}  # finished jobs whose terminal write has not landed
        self._live: dict[str, LiveOutput] = {}  # running job -> its output so far (GET /jobs/{id}/events)
        self._submit_lock = asyncio.Lock()
        self._usage: dict[str, tuple[float, int]] = {}  # tenant -> (measured at, bytes stored)
        self._tasks: list[asyncio.Task[None]] = []
        # SQLite gets its own thread: the default pool is shared with the sandbox layer's blocking calls.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tako-sqlite")
        self.deliveries = LocalDeliveries(DeliveryTable(lambda: self.store), self._db)  # completion webhooks
        self.webhooks = Dispatcher(self.deliveries, settings, on_attempt=self.metrics.webhook_attempt)
        self.sessions: Any = None  # tako_shim.backends.local.sessions.LocalSessions once started

    async def _db(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._db_thread, functools.partial(call, *args, **kwargs)
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._db(self.store.open)
        await self._db(self.deliveries.table.open)
        try:  # probing runsc starts a sandbox: keep it off the event loop
            self._executor = await asyncio.to_thread(self._executor_factory, self.settings)
        except Exception as exc:
            if type(exc).__name__ != "SandboxUnavailable":
                raise
            raise BackendStartError(str(exc)) from exc
        self._runtime_info = self._executor.runtime_info()
        start_pool = getattr(
            self._executor, "start", None
        )  # the warm pool (backends/local/sandbox/warmpool.py)
        if start_pool is not None:
            await start_pool()
        await self._apply_retention()
        for job_id, tenant in await self._db(self.store.requeue_unfinished):
            self._enqueue(job_id, tenant)
        if self._pending:
            log.info("re-queued %d unfinished jobs from the previous run", len(self._pending))
        self._tasks = [
            asyncio.create_task(self._worker(n), name=f"tako-worker-{n}")
            for n in range(self.settings.max_workers)
        ]
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="tako-retention"))
        self.webhooks.start()
        from tako_shim.backends.local.sessions import attach_sessions  # stateful sessions (docs/sessions.md)

        self.sessions = await attach_sessions(self)

    async def close(self) -> None:
        """Stop the workers; jobs still running stay ``running`` in SQLite and re-queue at next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.webhooks.close()
        if self.sessions is not None:
            await self.sessions.close()  # pauses live sessions to disk: they survive the restart
        close_pool = getattr(self._executor, "close", None)
        if close_pool is not None:
            await close_pool()
        await self._db(self.store.close)
        self._db_thread.shutdown(wait=False)

    # -- submission ---------------------------------------------------------------------------------

    async def submit(self, tenant: str, submission: Submission) -> SubmitResult:
        webhook_url = await accepted_url(self.settings, tenant, submission.webhook_url)  # 422 if refused
        if submission.requirements:
            try:
                self._validate_requirements(submission.requirements)
            except ValueError as exc:
                raise InvalidRequest(f"requirements: {exc}") from None
        async with self._submit_lock:
            if submission.idempotency_key:
                existing = await self._db(self.store.find_by_key, tenant, submission.idempotency_key)
                if existing is not None:
                    if existing.fingerprint != submission.fingerprint:
                        raise Conflict(IDEMPOTENCY_CONFLICT)
                    return SubmitResult(existing.job_id, cast(QueueStatus, existing.status), created=False)
            if len(self._pending) >= self.settings.max_queue_size:
                raise Unavailable(QUEUE_FULL)
            await self._check_quota(tenant)  # after the replay check: a replay stores nothing
            if self._queue.queued(tenant) >= self._tenant_queued_cap:
                raise RateLimited(
                    f"Tenant '{tenant}' already has {self._queue.queued(tenant)} queued jobs, its limit "
                    f"(tenant_max_queued_jobs={self._tenant_queued_cap}). Try again when some have run.",
                    headers={"Retry-After": "5"},
                )
            row = JobRow(
                job_id=str(uuid.uuid4()),
                tenant=tenant,
                status="queued",
                job_type=submission.job_type,
                created_at=records.utc_now(),
                code=submission.code,
                input_data=submission.input_data,
                requirements=list(submission.requirements),
                timeout=submission.timeout,
                startup_timeout=submission.startup_timeout,
                code_hash=sha256_hex(submission.code),
                input_hash=sha256_hex(canonical_json(submission.input_data)),
                idempotency_key=submission.idempotency_key,
                fingerprint=submission.fingerprint,
                correlation_id=submission.correlation_id,
                parent_execution_id=submission.parent_execution_id,
                relationship=submission.relationship,
            )
            if webhook_url is not None:  # before the job's row: a job never exists without its delivery
                await self._db(self.deliveries.table.add, new_delivery(row.job_id, tenant, webhook_url))
            await self._db(self.store.insert, row)
            self._enqueue(row.job_id, tenant)
            at, used = self._usage.get(tenant, (0.0, 0))
            self._usage[tenant] = (at, used + len(row.code) + len(canonical_json(row.input_data)))
        self.metrics.job_submitted(row.job_type)
        return SubmitResult(row.job_id, "queued", created=True)

    async def _check_quota(self, tenant: str) -> None:
        """``tenant_storage_quota_bytes`` against the tenant's usage: measured in SQLite at most every
        ``USAGE_MAX_AGE_SECONDS``, plus what was submitted since (outcomes count from the next measure)."""
        now = asyncio.get_running_loop().time()
        at, used = self._usage.get(tenant, (-USAGE_MAX_AGE_SECONDS, 0))
        if now - at >= USAGE_MAX_AGE_SECONDS:
            used = await self._db(self.store.tenant_usage, tenant)
            self._usage[tenant] = (now, used)
        quota = self.settings.tenant_storage_quota_bytes
        if used >= quota:
            raise InsufficientStorage(
                f"Tenant '{tenant}' stores {used} bytes of history and artifacts, its quota "
                f"(tenant_storage_quota_bytes={quota}). Old records are deleted after "
                f"execution_record_ttl_days={self.settings.execution_record_ttl_days}."
            )

    def _enqueue(self, job_id: str, tenant: str) -> None:
        self._pending.add(job_id)
        self._queue.put(tenant, job_id)

    # -- reads --------------------------------------------------------------------------------------

    async def _row(self, tenant: str, job_id: str) -> JobRow:
        row = await self._db(self.store.get, tenant, job_id)
        if row is None:
            raise NotFound("Job not found")
        return self._as_known(row)

    def _as_known(self, row: JobRow) -> JobRow:
        """The row with its finished-but-unsaved outcome applied: readers never see a write that lags."""
        unsaved = self._unsaved.get(row.job_id)
        return unsaved.applied_to(row) if unsaved is not None else row

    async def get_status(self, tenant: str, job_id: str) -> JobStatusResponse:
        row = await self._row(tenant, job_id)
        if row.status == "queued" and job_id in self._cancels:
            row.status = "running"  # a worker took it; its row is being updated
        position = self._pending.position(job_id)
        status = records.status_from_row(row, position)
        delivery = await self._db(self.deliveries.table.get, job_id)
        if delivery is not None:
            status.webhook = WebhookDelivery.model_validate(delivery.describe())
        return status

    async def get_record(self, tenant: str, job_id: str) -> ExecutionRecordFull:
        row = await self._row(tenant, job_id)
        return await asyncio.to_thread(records.record_from_row, row)  # a big record is built off the loop

    async def get_submission(self, tenant: str, job_id: str) -> Submission:
        row = await self._row(tenant, job_id)
        return Submission(
            code=row.code,
            input_data=row.input_data,
            job_type=row.job_type,
            timeout=row.timeout,
            startup_timeout=row.startup_timeout,
            requirements=row.requirements,
            correlation_id=row.correlation_id,
        )

    async def wait_for(self, tenant: str, job_id: str, wait_seconds: float) -> ExecutionRecordFull | None:
        # Register before reading, so a completion between the read and the wait still wakes us.
        event = self._done.setdefault(job_id, asyncio.Event())
        try:
            record = await self.get_record(tenant, job_id)
        except NotFound:
            if job_id not in self._pending and job_id not in self._cancels:
                self._done.pop(job_id, None)  # no event per unknown id
            raise
        if record.status in TERMINAL_STATUSES:
            if job_id not in self._pending and job_id not in self._cancels:
                self._done.pop(job_id, None)
            return record
        try:
            await asyncio.wait_for(event.wait(), wait_seconds)
        except TimeoutError:
            return None
        return await self.get_record(tenant, job_id)

    def live_output(self, job_id: str) -> LiveOutput | None:
        return self._live.get(job_id)

    async def list_records(self, tenant: str, query: RecordFilter) -> RecordPage:
        rows = await self._db(
            self.store.list_rows,
            tenant,
            status=query.status,
            job_type=query.job_type,
            limit=query.limit + 1,
            offset=query.offset,
            inline_output_bytes=query.inline_output_bytes,
            session_id=query.session_id,
        )
        known = [self._as_known(r) for r in rows[: query.limit]]
        built = await asyncio.to_thread(lambda: [records.record_from_row(r) for r in known])  # off the loop
        omitted = {r.job_id: r.omitted_output_bytes for r in known if r.omitted_output_bytes is not None}
        return RecordPage(records=built, has_more=len(rows) > query.limit, omitted_outputs=omitted)

    # -- control ------------------------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> None:
        row = await self._db(self.store.get, tenant, job_id)
        if row is None or self._as_known(row).status in TERMINAL_STATUSES:
            raise NotFound("Job not found or already completed")
        cancelled = TerminalState(
            "cancelled", records.utc_now(), None, records.cancelled_outcome("Execution was cancelled by user")
        )
        if job_id in self._pending:
            self._pending.remove(job_id)  # the worker skips ids no longer pending
            self._queue.discard(job_id)
            try:  # one attempt: the client learns whether the cancel is durable (503 if not)
                await self._write_terminal(job_id, cancelled)
            except StorageUnavailable:
                self._enqueue(job_id, tenant)  # still queued (at the back); a stale queue entry is skipped
                raise
            self._wake(job_id)
        elif job_id in self._cancels:
            # Durable before the answer: a crash right after the 200 must not run the job again (at a
            # restart only unfinished rows are queued). The worker's own outcome then finds the row
            # terminal and is dropped; a write that fails is a 503 and the job keeps running.
            await self._write_terminal(job_id, cancelled)
            self._cancels[job_id].set()
            self._wake(job_id)
        else:
            raise NotFound("Job not found or already completed")

    async def get_artifact(self, tenant: str, job_id: str, name: str) -> Artifact:
        if not name or "/" in name or "\\" in name or name in {".", ".."} or not name.isprintable():
            raise BadRequest("Invalid artifact path")
        record = await self.get_record(tenant, job_id)
        info = next((a for a in record.artifacts if a.name == name), None)
        if info is None:
            raise NotFound("Artifact not found")
        path = self._artifact_dir(job_id) / name
        try:
            content = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound("Artifact file not found") from None
        return Artifact(
            name=name,
            content=content,
            sha256=info.sha256,
            content_type=info.content_type or "application/octet-stream",
        )

    async def pool_stats(self, tenant: str) -> QueueStatsResponse:
        return QueueStatsResponse(
            pending=len(self._pending),
            running=len(self._cancels),
            max_workers=self.settings.max_workers,
            max_queue_size=self.settings.max_queue_size,
        )

    def metric_gauges(self) -> Gauges:
        sessions = self.sessions
        return Gauges(
            queue_depth=len(self._pending),
            jobs_running=len(self._cancels),
            sessions_open=None if sessions is None else sessions.open_total(),
        )

    async def health(self) -> HealthResponse:
        runtime = self._runtime_info.get("runtime")
        gvisor = runtime == "runsc"  # "none": permissive mode without a sandbox
        workers_alive = bool(self._tasks) and not any(t.done() for t in self._tasks)
        return HealthResponse(
            status="healthy" if gvisor and workers_alive else "degraded",
            docker_available=runtime is not None,
            gvisor_available=gvisor,
            circuit_breaker=CircuitBreakerStatus(),
            version=__version__,
            production_mode=self.settings.production_mode,
            queue_stats=await self.pool_stats("default"),
            backend=self.name,
            runtime=runtime,
            **health_details(self._runtime_info, self._executor, self.settings),
        )

    # -- workers ------------------------------------------------------------------------------------

    def _artifact_dir(self, job_id: str) -> Path:
        return self.settings.data_dir / "runs" / job_id / "artifacts"

    async def _worker(self, number: int) -> None:
        while True:
            tenant, job_id = await self._queue.get()
            if job_id not in self._pending:
                self._queue.done(tenant)
                continue  # cancelled while queued
            self._pending.remove(job_id)
            # From here on the job counts as running, so a cancel reaches it through this switch.
            cancel = self._cancels[job_id] = asyncio.Event()
            try:
                await self._run(job_id, cancel)
            except StorageUnavailable as exc:  # the job could not even be read, so it has not run
                log.warning("worker %d: job %s not started (%s); re-queued", number, job_id, exc.cause)
                self._enqueue(job_id, tenant)
                await asyncio.sleep(TERMINAL_WRITE_FIRST_DELAY_SECONDS)
            except Exception as exc:  # a bug: record it, keep the worker alive
                log.exception("worker %d: job %s failed outside the sandbox", number, job_id)
                await self._finish(job_id, "failed", None, records.internal_error_outcome(str(exc)))
            finally:
                self._cancels.pop(job_id, None)
                self._live.pop(job_id, None)
                self._queue.done(tenant)

    async def _run(self, job_id: str, cancel: asyncio.Event) -> None:
        """Run one job; raises ``StorageUnavailable`` only before it starts (the read of its row)."""
        row = await self._db(self.store.get_any_tenant, job_id)
        if row is None or row.status in TERMINAL_STATUSES:
            return
        started_at = records.utc_now()
        try:
            await self._db(self.store.mark_running, job_id, started_at)
        except StorageUnavailable as exc:  # the row stays 'queued' until the terminal write; run it anyway
            log.warning("job %s: could not mark it running (%s); running it anyway", job_id, exc.cause)
        if cancel.is_set():
            status, outcome = "cancelled", records.cancelled_outcome("Execution was cancelled by user")
        else:
            status, outcome = await self._execute(row, cancel)
        ended_at = records.utc_now()
        await self._finish(job_id, status, records.duration_ms(started_at, ended_at), outcome, ended_at)

    async def _execute(self, row: JobRow, cancel: asyncio.Event) -> tuple[str, dict[str, Any]]:
        assert self._executor is not None
        jt = self.resolver.job_type(row.job_type)
        job = self._job_factory(self.settings, row, dict(jt.environment), jt.memory_limit, jt.cpu_limit)
        if jt.preload is not None and dataclasses.is_dataclass(job):
            job = dataclasses.replace(job, preload=tuple(jt.preload))  # type: ignore[type-var]
        artifact_dir = self._artifact_dir(row.job_id)
        last_error = ""
        for attempt in range(1, self.settings.max_retry_attempts + 1):
            if hasattr(job, "on_output"):  # a SandboxJob (queue tests use other job objects)
                live = self._live[row.job_id] = LiveOutput(
                    {"stdout": self.settings.max_stdout_bytes, "stderr": self.settings.max_stderr_bytes}
                )  # a retried attempt starts a fresh log; streams skip what their cursor has
                job = dataclasses.replace(job, on_output=live.append)
            if artifact_dir.exists():
                await asyncio.to_thread(shutil.rmtree, artifact_dir, True)
            artifact_dir.mkdir(parents=True, exist_ok=True)
            try:
                outcome = await self._executor.run(job, artifact_dir, cancel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an infrastructure failure, never the user's code: retry
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "job %s attempt %d failed in the sandbox layer: %s", row.job_id, attempt, last_error
                )
                if cancel.is_set():
                    break
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
                continue
            result: dict[str, Any] = outcome.to_dict()
            if row.job_id in self._live:
                self._live[row.job_id].close()
            return str(result.pop("status")), result
        if cancel.is_set():
            return "cancelled", records.cancelled_outcome("Execution was cancelled by user")
        return "failed", records.internal_error_outcome(f"sandbox failure: {last_error}")

    async def _finish(
        self,
        job_id: str,
        status: str,
        duration: int | None,
        outcome: dict[str, Any],
        ended_at: str | None = None,
    ) -> None:
        """Make the terminal state known at once, then write it, retrying storage faults; never raises.

        Until the write lands, readers get the outcome from ``_unsaved``. A write that keeps failing
        for ``TERMINAL_WRITE_GIVE_UP_SECONDS`` is logged as an error and the outcome stays in memory
        (the row is still unfinished, so the job runs again after a restart).
        """
        state = TerminalState(status, ended_at or records.utc_now(), duration, outcome)
        self._unsaved[job_id] = state
        self._wake(job_id)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + TERMINAL_WRITE_GIVE_UP_SECONDS
        delay = TERMINAL_WRITE_FIRST_DELAY_SECONDS
        for attempt in itertools.count(1):
            try:
                await self._write_terminal(job_id, state)
            except StorageUnavailable as exc:
                if loop.time() + delay > give_up_at:
                    log.error(
                        "job %s: terminal state (%s) still not written after %d attempts (%s); kept in "
                        "memory, the job re-runs after a restart",
                        job_id,
                        status,
                        attempt,
                        exc.cause,
                    )
                    return
                log.warning(
                    "job %s: terminal write attempt %d failed (%s); retrying in %.2fs",
                    job_id,
                    attempt,
                    exc.cause,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, TERMINAL_WRITE_MAX_DELAY_SECONDS)
            except Exception:  # not a storage fault: a bug; keep the outcome in memory, keep the worker
                log.exception("job %s: terminal write failed; outcome kept in memory", job_id)
                return
            else:
                if attempt > 1:
                    log.info("job %s: terminal state written after %d attempts", job_id, attempt)
                return

    async def _write_terminal(self, job_id: str, state: TerminalState) -> None:
        """One attempt at the terminal row; on success the in-memory copy is no longer needed."""
        job_type = await self._db(
            self.store.finish,
            job_id,
            status=state.status,
            ended_at=state.ended_at,
            duration_ms=state.duration_ms,
            outcome=state.outcome,
        )
        if job_type is not None:  # counted once: the write that made the row terminal
            self.metrics.job_finished(state.status, job_type)
        self._unsaved.pop(job_id, None)
        self.webhooks.poke()  # its delivery (if any) is due now that the outcome is durable

    def _wake(self, job_id: str) -> None:
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()

    # -- retention ----------------------------------------------------------------------------------

    async def _apply_retention(self) -> None:
        cutoff = (datetime.now(UTC) - timedelta(days=self.settings.execution_record_ttl_days)).isoformat()
        deleted = await self._db(self.store.delete_finished_before, cutoff)
        for job_id in deleted:
            await asyncio.to_thread(shutil.rmtree, self.settings.data_dir / "runs" / job_id, True)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_INTERVAL_SECONDS)
            try:
                await self._apply_retention()
            except Exception:  # e.g. a locked database: try again next round, keep the task alive
                log.exception("retention pass failed; retrying in %ds", RETENTION_INTERVAL_SECONDS)
