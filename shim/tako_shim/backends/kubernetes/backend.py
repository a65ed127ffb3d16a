"""The kubernetes backend: every job is a ``PythonJob`` object; the operator runs it, the cluster keeps it.

- ``submit`` creates a PythonJob in the tenant's namespace (tenant = namespace, so one tenant never
  reads another's jobs). With an idempotency key the name is derived from (tenant, key): a retry
  meets 409 AlreadyExists and gets the existing job back, or ``Conflict`` if the fingerprint
  annotation differs.
- Status, records and history are read from the objects (``translate`` does the mapping);
  history lists the namespace with a label selector for ``job_type`` and filters, sorts (newest
  first) and pages in the shim.
- ``wait_for`` subscribes to the process's shared watch (``watch``), so any replica answers
  a long-poll for any job.
- Job types are the namespace's ``PythonJobType`` objects plus the built-in ``default``
  (``GET /job-types``, and a submit naming another type is refused with 422).
- ``cancel`` sets ``spec.cancel``; rerun and fork create new objects with
  ``spec.parentJob``/``spec.relationship``. A rerun of a job whose code is in a ConfigMap
  (``spec.codeRef``) points at the same ConfigMap: the shim never reads ConfigMaps.

- ``max_queue_size`` caps the jobs waiting (not yet running) in a tenant's namespace: a submit
  beyond it is 503 ``Job queue is full`` with ``Retry-After``; the count comes from a namespace list
  at most every 2 s plus this replica's own creates (approximate; a ResourceQuota is exact).

Not here: artifact contents (the cluster keeps artifact metadata in status, not the bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

from tako_shim.backends.base import (
    Artifact,
    Backend,
    Cursor,
    JobEvent,
    Overrides,
    RecordFilter,
    RecordPage,
    Submission,
    SubmitResult,
)
from tako_shim.backends.kubernetes.api import KubeApi, KubeApiError
from tako_shim.backends.kubernetes.events import following_events
from tako_shim.backends.kubernetes.sessions import KubeSessions
from tako_shim.backends.kubernetes.translate import (
    ClusterJobResolver,
    cancel_patch,
    code_ref,
    count_active,
    fingerprint_of,
    is_job_name,
    is_terminal,
    job_name,
    job_object,
    job_type_selector,
    job_types_from_objects,
    namespace_for,
    page_of,
    record_from_job,
    status_from_job,
    submission_from_job,
    unknown_job_type,
)
from tako_shim.backends.kubernetes.watch import JobWatch
from tako_shim.config import Settings
from tako_shim.errors import (
    BackendStartError,
    BadRequest,
    ClusterUnavailable,
    Conflict,
    InvalidRequest,
    NotFound,
    ShimError,
    Unavailable,
)
from tako_shim.webhooks.dispatcher import accepted_url
from tako_vm import __version__
from tako_vm.models.crd import DEFAULT_JOB_TYPE_NAME
from tako_vm.models.pythonjob import contract_status
from tako_vm.models.wire import (
    CircuitBreakerStatus,
    ExecutionRecordFull,
    HealthResponse,
    JobStatusResponse,
    JobTypeResponse,
    QueueStatsResponse,
    QueueStatus,
)

IDEMPOTENCY_CONFLICT = "Idempotency key reused with different payload"
NOT_FOUND = "Job not found"
HEALTH_CACHE_SECONDS = 5.0
QUEUE_COUNT_MAX_AGE_SECONDS = 2.0
JOB_TYPE_CACHE_SECONDS = 2.0
QUEUE_FULL = "Job queue is full. Try again later."
QUEUE_FULL_RETRY_AFTER_SECONDS = 5
HEALTH_PROBE_SECONDS = 5.0
# Jobs this replica created and the watch has not yet shown terminal (for takovm_shim_jobs_finished);
# past this many the oldest are forgotten (not counted), so memory stays bounded.
MAX_FOLLOWED_JOBS = 10_000
ARTIFACTS_NOT_RETAINED = (
    "Artifact contents are not retained by the kubernetes backend (status lists name, size and sha256)"
)


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, settings: Settings, api: KubeApi | None = None) -> None:
        """``api`` is for tests that bring their own connection; normally ``start`` connects."""
        super().__init__(settings)
        self.resolver = ClusterJobResolver(settings)
        self._api = api
        self._watch: JobWatch | None = None
        self._health_cache: tuple[float, QueueStatsResponse | None] = (-HEALTH_CACHE_SECONDS, None)
        self._queued: dict[str, tuple[float, int]] = {}  # namespace -> (when listed, queued jobs)
        self._job_type_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.sessions = KubeSessions(self)  # PythonSessions (sessions.py, docs/sessions.md)
        self._followed: OrderedDict[tuple[str, str], str] = OrderedDict()  # (namespace, name) -> job type

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._api is None:
            try:
                self._api = await KubeApi.connect(self.settings.kubernetes)
            except Exception as exc:  # no kubeconfig, unreadable service account, bad certificate
                raise BackendStartError(f"cannot load the Kubernetes configuration: {exc}") from exc
        self._watch = JobWatch(self._api, observer=self._observe)

    def _observe(self, namespace: str, event_type: str, job: dict[str, Any]) -> None:
        """Count a job this replica created once, when the watch first shows it terminal (every replica
        watches every job; counting only its own keeps the sum over replicas right)."""
        key = (namespace, str((job.get("metadata") or {}).get("name")))
        if key not in self._followed:
            return
        if event_type == "DELETED":
            del self._followed[key]
        elif is_terminal(job):
            self.metrics.job_finished(contract_status(job), self._followed.pop(key))

    def _follow(self, namespace: str, name: str, job_type: str) -> None:
        self._followed[(namespace, name)] = job_type
        while len(self._followed) > MAX_FOLLOWED_JOBS:
            self._followed.popitem(last=False)
        self.watch.follow(namespace)

    async def close(self) -> None:
        await self.sessions.close()
        if self._watch is not None:
            await self._watch.close()
        if self._api is not None:
            await self._api.close()

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise Unavailable("The kubernetes backend is not started")
        return self._api

    @property
    def watch(self) -> JobWatch:
        if self._watch is None:
            raise Unavailable("The kubernetes backend is not started")
        return self._watch

    def _namespace(self, tenant: str) -> str:
        return namespace_for(tenant, self.settings.kubernetes)

    async def _call(self, coro: Any) -> Any:
        """Await an API call, turning API failures into the contract's errors."""
        try:
            return await coro
        except KubeApiError as exc:
            raise api_failure(exc) from None

    async def _job(self, tenant: str, job_id: str) -> dict[str, Any]:
        if not is_job_name(job_id):
            raise NotFound(NOT_FOUND)
        job: dict[str, Any] | None = await self._call(self.api.get_job(self._namespace(tenant), job_id))
        if job is None:
            raise NotFound(NOT_FOUND)
        return job

    # -- submission ---------------------------------------------------------------------------------

    async def prepare(self, tenant: str, submission: Submission) -> Submission:
        """Timeouts the request left unset come from the namespace's PythonJobType (as the operator
        would take them), so ``max_timeout`` and the sync wait see the real value."""
        if submission.job_type == DEFAULT_JOB_TYPE_NAME:
            return submission  # the built-in type: the shim's default_timeout applies
        job_type = await self._job_type_object(self._namespace(tenant), submission.job_type)
        spec = (job_type or {}).get("spec") or {}
        return self.resolver.with_job_type_timeouts(
            submission, _seconds(spec.get("timeoutSeconds")), _seconds(spec.get("startupTimeoutSeconds"))
        )

    async def submit(self, tenant: str, submission: Submission) -> SubmitResult:
        return await self._create(tenant, submission)

    async def _create(
        self, tenant: str, submission: Submission, code_from: tuple[str, str] | None = None
    ) -> SubmitResult:
        """Create the PythonJob (``code_from``: a ConfigMap key to run instead of ``submission.code``)."""
        namespace = self._namespace(tenant)
        name = job_name(tenant, submission.idempotency_key)
        # The same check as the local backend's (422 naming the address); the operator sends it, signed
        # with the namespace's secret from its Kubernetes Secret, and checks the address again then.
        webhook_url = await accepted_url(self.settings, tenant, submission.webhook_url, secret_here=False)
        body = job_object(name, namespace, tenant, submission, code_ref=code_from, webhook_url=webhook_url)
        await self._require_job_type(namespace, submission.job_type)
        if not await self._queue_has_room(namespace):
            # A retry of a job that exists is answered even when the queue is full; nothing else is.
            replay = await self._existing(namespace, name, submission) if submission.idempotency_key else None
            if replay is None:
                raise Unavailable(QUEUE_FULL, headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_SECONDS)})
            return replay
        try:
            await self.api.create_job(namespace, body)
        except KubeApiError as exc:
            if exc.status != 409 or not submission.idempotency_key:
                raise api_failure(exc) from None
            replay = await self._existing(namespace, name, submission)
            if replay is not None:
                return replay
            # deleted (TTL) between the create and the read: create again
            await self._call(self.api.create_job(namespace, body))
        self._count_queued(namespace)
        self.metrics.job_submitted(submission.job_type)
        self._follow(namespace, name, submission.job_type)
        return SubmitResult(name, "queued", created=True)

    async def _existing(self, namespace: str, name: str, submission: Submission) -> SubmitResult | None:
        """The job an idempotency key already names (``Conflict`` if its payload differs), or ``None``."""
        existing = await self._call(self.api.get_job(namespace, name))
        if existing is None:
            return None
        if fingerprint_of(existing) != submission.fingerprint:
            raise Conflict(IDEMPOTENCY_CONFLICT)
        return SubmitResult(name, _queue_status(existing), created=False)

    async def _queue_has_room(self, namespace: str) -> bool:
        """Fewer than ``max_queue_size`` jobs of the namespace wait for the operator to start them.

        The count is read by listing the namespace at most every ``QUEUE_COUNT_MAX_AGE_SECONDS``, plus
        this replica's creates since: a bound per tenant namespace, approximate across replicas and
        under concurrent submits (a ``ResourceQuota`` on ``count/pythonjobs.takovm.dev`` is exact)."""
        read_at, queued = self._queued.get(namespace, (-QUEUE_COUNT_MAX_AGE_SECONDS, 0))
        if time.monotonic() - read_at > QUEUE_COUNT_MAX_AGE_SECONDS:
            queued, _running = count_active(await self._call(self.api.list_jobs(namespace)))
            self._queued[namespace] = (time.monotonic(), queued)
        return queued < self.settings.max_queue_size

    def _count_queued(self, namespace: str) -> None:
        read_at, queued = self._queued.get(namespace, (-QUEUE_COUNT_MAX_AGE_SECONDS, 0))
        self._queued[namespace] = (read_at, queued + 1)

    async def _require_job_type(self, namespace: str, name: str) -> None:
        """``InvalidRequest`` (422) unless ``namespace`` defines ``name`` (``default`` is built in)."""
        if name == DEFAULT_JOB_TYPE_NAME:
            return
        if await self._job_type_object(namespace, name) is None:
            known = [
                t.name for t in job_types_from_objects(await self._call(self.api.list_job_types(namespace)))
            ]
            raise unknown_job_type(name, known)

    async def _job_type_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PythonJobType; one that exists is reused for ``JOB_TYPE_CACHE_SECONDS`` (a submit asks
        twice), a missing one is asked for again (so a type just created is seen at once)."""
        read_at, found = self._job_type_cache.get((namespace, name), (-JOB_TYPE_CACHE_SECONDS, {}))
        if time.monotonic() - read_at <= JOB_TYPE_CACHE_SECONDS:
            return found
        fresh: dict[str, Any] | None = await self._call(self.api.get_job_type(namespace, name))
        if fresh is not None:
            self._job_type_cache[(namespace, name)] = (time.monotonic(), fresh)
        return fresh

    async def job_types(self, tenant: str) -> list[JobTypeResponse]:
        return job_types_from_objects(await self._call(self.api.list_job_types(self._namespace(tenant))))

    # -- reads --------------------------------------------------------------------------------------

    async def get_status(self, tenant: str, job_id: str) -> JobStatusResponse:
        return status_from_job(await self._job(tenant, job_id))

    async def get_record(self, tenant: str, job_id: str) -> ExecutionRecordFull:
        try:
            return record_from_job(await self._job(tenant, job_id))
        except NotFound:  # a session execution's id (a UUID too): its record ConfigMap, if any
            return (await self._session_execution(tenant, job_id))[0]

    async def _session_execution(self, tenant: str, execution_id: str) -> tuple[ExecutionRecordFull, str]:
        """(record, code) of a session execution; ``NotFound`` if the tenant has none by that id."""
        found = await self.sessions.records(tenant, execution_id=execution_id)
        if not found:
            raise NotFound(NOT_FOUND)
        return found[0]

    async def get_submission(self, tenant: str, job_id: str) -> Submission:
        """As submitted; ``code`` is ``""`` when it is in a ConfigMap (``code_ref``), which the shim
        may not read: a fork brings its own code and a rerun points at the same ConfigMap."""
        try:
            return self._submission(await self._job(tenant, job_id))
        except NotFound:  # a session execution: its code, as the local backend keeps it
            record, code = await self._session_execution(tenant, job_id)
            return Submission(
                code=code,
                input_data={},
                job_type=record.job_type,
                timeout=self.settings.default_timeout,
                startup_timeout=0,
                idempotency_key=record.idempotency_key,
                parent_execution_id=record.session_id,
                relationship="session",
            )

    def _submission(self, job: dict[str, Any]) -> Submission:
        return submission_from_job(
            job,
            code=str((job.get("spec") or {}).get("code") or ""),
            default_timeout=self.settings.default_timeout,
            default_startup_timeout=self.settings.default_startup_timeout,
        )

    async def rerun(self, tenant: str, job_id: str, overrides: Overrides) -> SubmitResult:
        job = await self._job(tenant, job_id)
        if not is_terminal(job):
            raise BadRequest("Cannot rerun job that hasn't completed")
        derived = self.resolver.derive(self._submission(job), job_id, "rerun", overrides)
        return await self._create(tenant, derived, code_from=code_ref(job))

    async def wait_for(self, tenant: str, job_id: str, wait_seconds: float) -> ExecutionRecordFull | None:
        if not is_job_name(job_id):
            raise NotFound(NOT_FOUND)
        namespace = self._namespace(tenant)
        deadline = time.monotonic() + wait_seconds
        # Subscribe before reading, so a completion between the read and the wait still wakes us.
        async with self.watch.subscribe(namespace, job_id) as sub:
            job = await self._job(tenant, job_id)
            while not is_terminal(job):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await sub.next_change(remaining):
                    # One fresh read before answering 408: a watch that was down or stalled may have
                    # missed the completion (if the API is down too, this is a 503, not a 408).
                    job = await self._job(tenant, job_id)
                    return record_from_job(job) if is_terminal(job) else None
                if sub.deleted:
                    raise NotFound(NOT_FOUND)
                if sub.latest is not None:
                    job = sub.latest
            return record_from_job(job)

    async def events(self, tenant: str, job_id: str, cursor: Cursor) -> AsyncGenerator[JobEvent, None]:
        """Live output from the job Pod's log (``tako_shim.backends.kubernetes.events``)."""

        async def wait(seconds: float) -> None:
            await self.wait_for(tenant, job_id, seconds)

        def status_of(job: dict[str, Any]) -> str:
            current = status_from_job(job).status
            return "queued" if current == "pending" else current

        stream = following_events(
            self.api,
            self._namespace(tenant),
            job_id,
            cursor,
            read_job=lambda: self._job(tenant, job_id),
            status_of=status_of,
            record_of=record_from_job,
            wait=wait,
            limits={"stdout": self.settings.max_stdout_bytes, "stderr": self.settings.max_stderr_bytes},
        )
        async for event in stream:
            yield event

    async def list_records(self, tenant: str, query: RecordFilter) -> RecordPage:
        jobs: list[dict[str, Any]] = []
        if not query.session_id:  # a PythonJob never ran in a session
            jobs = await self._call(
                self.api.list_jobs(self._namespace(tenant), job_type_selector(query.job_type))
            )
        found = await self.sessions.records(tenant, session_id=query.session_id)
        return page_of(jobs, query, [record for record, _ in found])

    # -- control ------------------------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> None:
        try:
            job = await self._job(tenant, job_id)
        except NotFound:
            raise NotFound("Job not found or already completed") from None
        if is_terminal(job):
            raise NotFound("Job not found or already completed")
        patched = await self._call(self.api.patch_job(self._namespace(tenant), job_id, cancel_patch()))
        if patched is None:
            raise NotFound("Job not found or already completed")

    async def get_artifact(self, tenant: str, job_id: str, name: str) -> Artifact:
        if not name or "/" in name or "\\" in name or name in {".", ".."} or "\x00" in name:
            raise BadRequest("Invalid artifact path")
        record = await self.get_record(tenant, job_id)
        if not any(a.name == name for a in record.artifacts):
            raise NotFound("Artifact not found")
        raise NotFound(ARTIFACTS_NOT_RETAINED)

    async def pool_stats(self, tenant: str) -> QueueStatsResponse:
        queued, running = count_active(await self._call(self.api.list_jobs(self._namespace(tenant))))
        return QueueStatsResponse(
            pending=queued,
            running=running,
            max_workers=self.settings.max_workers,
            max_queue_size=self.settings.max_queue_size,
        )

    async def health(self) -> HealthResponse:
        """Reachability of the API and the default tenant's counts, measured at most every few seconds
        (probes call this often; listing a namespace of 10,000 jobs on each would be wasteful).
        ``degraded`` also while a job watch is failing: long-polls then wake only at their deadline."""
        checked_at, stats = self._health_cache
        if time.monotonic() - checked_at > HEALTH_CACHE_SECONDS:
            try:
                stats = await asyncio.wait_for(self.pool_stats("default"), HEALTH_PROBE_SECONDS)
            except (Unavailable, TimeoutError):
                stats = None
            self._health_cache = (time.monotonic(), stats)
        reachable = stats is not None
        watching = self._watch is None or not self._watch.failing_namespaces()
        return HealthResponse(
            status="healthy" if reachable and watching else "degraded",
            docker_available=reachable,
            gvisor_available=reachable,
            circuit_breaker=CircuitBreakerStatus(),
            version=__version__,
            production_mode=self.settings.production_mode,
            queue_stats=stats
            or QueueStatsResponse(
                pending=0,
                running=0,
                max_workers=self.settings.max_workers,
                max_queue_size=self.settings.max_queue_size,
            ),
            backend=self.name,
            runtime="gvisor",
            security_mode=self.settings.security_mode,
            auth_enabled=self.settings.api_auth_enabled,
        )


def api_failure(exc: KubeApiError) -> ShimError:
    """The contract's error for a failed API call (the API's own message kept for operators).

    A refused object (400, 422) is the request's fault: 422. A missing permission, namespace or CRD
    is the deployment's: 503 without a retry hint (retrying cannot help). Anything else (unreachable,
    5xx, 429, ...) is transient: 503 with ``Retry-After``, never a 500.
    """
    if exc.status in (400, 422):
        return InvalidRequest(f"the Kubernetes API rejected the job: {exc.message}")
    if exc.status == 403:
        return Unavailable(f"the shim is not allowed to do this in the namespace: {exc.message}")
    if exc.status == 404:
        return Unavailable(f"the namespace or the PythonJob CRD does not exist in the cluster: {exc.message}")
    return ClusterUnavailable(f"Kubernetes API unavailable: {exc}")


def _seconds(value: Any) -> int | None:
    """A PythonJobType's timeout field, if it is a positive integer (the CRD's schema says so)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _queue_status(job: dict[str, Any]) -> QueueStatus:
    record = record_from_job(job)
    return record.status
