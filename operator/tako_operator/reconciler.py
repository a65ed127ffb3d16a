"""The Reconciler: carries out `core.plan` through `io.kube` (one pass per job, serialised per job).

Triggers (wired in handlers.py): every PythonJob watch event, every event of a Pod owned by a
PythonJob, and wake-ups the plan asks for (deadlines, retry backoff, TTL). All of them funnel into
`Reconciler.reconcile`, which is idempotent and serialised per job. An in-memory kopf index of all
PythonJobs feeds admission (kopf fills indexes from the initial listing before any handler runs, so a
restarted operator knows every admitted job before it admits a new one) and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import time
from collections.abc import AsyncIterator, Hashable, Mapping
from typing import Any

from tako_operator.core import builders, objects
from tako_operator.core import standby as standby_mod
from tako_operator.core.admission import Admission, Entry, Key
from tako_operator.core.jobcache import JobCache, is_slim
from tako_operator.core.plan import (
    EGRESS_LABEL,
    TERMINAL_PHASES,
    Observed,
    Plan,
    job_key,
    logs_needed,
    plan,
)
from tako_operator.core.status import status_changed
from tako_operator.core.webhooks import due_in
from tako_operator.io import detached
from tako_operator.io.kube import Kube, retryable
from tako_operator.io.metrics import Metrics
from tako_operator.io.pool import StandbyPool
from tako_operator.io.webhooks import WebhookSender
from tako_operator.settings import Settings

log = logging.getLogger("tako_operator")
INDEX_KEY = "jobs"
JOB_INDEX, POD_INDEX, TYPE_INDEX = "tako_jobs", "tako_pods", "tako_job_types"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def api_retry_delay(config: Settings, failures: int) -> float:
    """Seconds before retrying a pass after `failures` consecutive transient API errors."""
    delay = config.api_retry_backoff_seconds * 2 ** min(failures - 1, 30)
    return float(min(delay, config.api_retry_backoff_max_seconds))


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"HTTP {status} {reason}" if status else repr(exc)[:200]


class KeyedLocks:
    """One asyncio lock per key that exists only while someone holds or waits for it (pure asyncio).

    The Reconciler serialises passes per job. A plain `dict[key, Lock]` keeps a lock for every job the
    operator ever reconciled until the job object is deleted (finished jobs wait for their TTL, possibly
    days): per-job memory that grows with the jobs kept, not with the work in flight. Here the entry
    is dropped when its last user leaves, so the table holds at most the jobs being reconciled."""

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


class Reconciler:
    def __init__(self, kube: Kube, config: Settings, metrics: Metrics) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.pool = StandbyPool(kube, config.pods, config.standby)
        self.webhooks = WebhookSender(
            kube, config.webhooks, config.pod_namespace, on_attempt=metrics.webhook_attempt
        )
        self.admission = Admission(limit=config.max_concurrent)
        self.locks = KeyedLocks()  # per job, only while a pass holds or waits for it
        self.api_failures: dict[Key, int] = {}  # consecutive transient API errors per job
        self.admission_lock = asyncio.Lock()
        self.wakeups: dict[Key, asyncio.TimerHandle] = {}
        self.job_index: Any = None
        # The newest body of each job (watch or the answer to the operator's own write): no GET per pass.
        self.jobs = JobCache(config.job_cache_entries)
        # kopf's in-memory indexes (live views, filled before any handler runs): pods owned by
        # PythonJobs and PythonJobTypes, so a reconcile reads them without API calls.
        self.pod_index: Any = None
        self.type_index: Any = None
        self.indexes_bound = asyncio.Event()  # set once this kopf run's indexes are known
        self.runs = 0
        metrics.bind(lambda: self.entries, lambda: self.admission.waiting(self.entries))

    # -- entry points ---------------------------------------------------------------------------

    async def on_job_event(self, event_type: str | None, job: dict[str, Any]) -> None:
        if event_type == "DELETED":
            await self.forget(job)
            return
        stored = self.jobs.observed(job)
        await self.reconcile(job_key(job), None if stored is None else (job, stored))

    @property
    def entries(self) -> list[Entry]:
        """Every watched PythonJob, as kopf's live index sees it now."""
        if self.job_index is None:
            return []
        return list(self.job_index.get(INDEX_KEY, []))

    def bind_indexes(self, kwargs: dict[str, Any]) -> None:
        self.job_index = kwargs[JOB_INDEX]
        self.pod_index = kwargs[POD_INDEX]
        self.type_index = kwargs[TYPE_INDEX]
        self.indexes_bound.set()

    def new_run(self) -> None:
        """kopf (re)starts: forget what the previous run knew about the jobs (its indexes, the job
        cache). The new run lists every resource from the API and fills new indexes before its first
        handler; until then a pass (a wake-up timer) waits for them instead of deciding on a list
        that may hold jobs deleted meanwhile. Admission slots and timers live on."""
        self.runs += 1
        self.job_index = self.pod_index = self.type_index = None
        self.indexes_bound = asyncio.Event()
        self.jobs = JobCache(self.config.job_cache_entries)

    async def poke(self, namespace: str, name: str) -> None:
        """Reconcile a job by name, reading it fresh from the API."""
        await self.reconcile((namespace, name))

    # -- the loop body ------------------------------------------------------------------------

    async def reconcile(self, key: Key, event: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        """One pass for the job `key`, on its newest known body (`event`: the body of the watch event
        that triggered the pass and what the cache stored of it, used while that is the newest).
        Taken inside the per-job lock from the job cache: a watch event's body may already be older
        than what another pass just wrote, and the cache knows (jobcache.py). The job is read from
        the API only when the cache has no body, or a slim one and the pass may create objects
        (which need the code and input).

        A transient API fault (5xx, 409 Conflict, 429, a dropped connection) on any call schedules the
        same pass again with backoff: kopf does not retry event handlers, and no other watch event
        may ever come for the job. Every pass starts from what is stored, so a retry is idempotent."""
        if self.runs and not self.indexes_bound.is_set():
            await self.indexes_bound.wait()  # a restarted kopf run has not listed the jobs yet
        started = time.monotonic()
        try:
            async with self.locks.hold(key):
                fresh = await self.current_job(key, event)
                if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                    return
                observed = await self.observe(fresh)
                result = plan(observed)
                await self.apply(fresh, observed, result)
                self.arm_webhook(
                    key, {**fresh, "status": {**(fresh.get("status") or {}), **(result.status or {})}}
                )
        except Exception as exc:
            if not retryable(exc):
                raise
            failures = self.api_failures[key] = self.api_failures.get(key, 0) + 1
            delay = api_retry_delay(self.config, failures)
            log.warning(
                "job %s/%s: transient API error (%s); reconciling again in %.1f s (try %d)",
                *key,
                _short(exc),
                delay,
                failures + 1,
            )
            self.schedule(key, delay)
            return
        self.api_failures.pop(key, None)
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    async def current_job(
        self, key: Key, event: tuple[dict[str, Any], dict[str, Any]] | None
    ) -> dict[str, Any] | None:
        if event is not None and self.jobs.is_current(key, event[1]):
            return event[0]  # the triggering event is still the newest version: full, in hand
        cached = self.jobs.get(key)
        if cached is not None and not (is_slim(cached) and self.may_create(cached)):
            return copy.deepcopy(cached)
        fresh = await self.kube.get_job(*key)
        if fresh is not None:
            self.jobs.observed(fresh)  # newer than every event so far
        return fresh

    def may_create(self, job: dict[str, Any]) -> bool:
        """Whether a pass on `job` may create objects or push to a standby Pod (then it needs the full
        job): not finished, not cancelled, and no attempt yet or its Pod not seen."""
        status = job.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES or (job.get("spec") or {}).get("cancel"):
            return False
        attempts = int(status.get("attempts") or 0)
        if attempts == 0 or self.pod_index is None:
            return True
        pod_name = status.get("podName") or objects.pod_name(job, attempts)
        return not list(self.pod_index.get((job_key(job)[0], pod_name), []))

    async def observe(self, job: dict[str, Any]) -> Observed:
        key = job_key(job)
        status = job.get("status") or {}
        terminal = status.get("phase") in TERMINAL_PHASES
        job_type = await self.resolve_job_type(job)
        admitted = False
        if int(status.get("attempts") or 0) > 0 and not terminal:
            # Its own status shows it was admitted (the durable half of admission), as its index
            # entry would: no scan of every entry, which made each pass O(jobs) under a burst.
            admitted = not (job.get("spec") or {}).get("cancel")
        elif not terminal and not (job.get("spec") or {}).get("cancel"):
            async with self.admission_lock:
                entries = self.entries
                self.admission.prune(entries)
                admitted = self.admission.decide(key, entries)
        pod = None
        attempt = int(status.get("attempts") or 0)
        if job_type is not None and (admitted or terminal or attempt > 0):
            pod_name = status.get("podName") or objects.pod_name(job, max(attempt, 1))
            pod = await self.find_pod(key[0], pod_name)
            if pod is None and (attempt > 0 or pod_name != objects.pod_name(job, max(attempt, 1))):
                # The Pod of a started attempt (or a claimed standby Pod) that the index does not show
                # (yet: the Pod watch may lag the job watch under a burst): ask the API before the plan
                # takes it for lost and schedules a retry.
                pod = await self.kube.get_pod(key[0], pod_name)
        standby = None
        if admitted and pod is None and attempt == 0 and job_type and job_type.get("standbyPods"):
            pod = self.find_claimed_pod(job)  # claimed before a crash, status not yet written
            if pod is not None:
                await self.pool.resume(key[0], pod, job, job_type)
            else:
                standby = await self.pool.reserve(key[0], objects.job_type_name(job), job_type)
        logs: dict[str, str] = {}
        cancel = bool((job.get("spec") or {}).get("cancel"))
        # A finished job's record is stored: its leftover Pod is only deleted, never read again.
        for container in [] if terminal else logs_needed(pod, cancel):
            assert pod is not None
            limit = self.config.pods.log_limit_bytes
            text = await self.kube.read_log(key[0], pod["metadata"]["name"], container, limit)
            if text is not None:
                logs[container] = text
        return Observed(
            job=job,
            now=_now(),
            admitted=admitted,
            job_type=job_type,
            pod=pod,
            logs=logs,
            limits=self.config.limits,
            settings=self.config.pods,
            standby=standby,
        )

    async def find_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.pod_index is None:
            return await self.kube.get_pod(namespace, name)
        found = list(self.pod_index.get((namespace, name), []))
        return copy.deepcopy(found[-1]) if found else None

    def find_claimed_pod(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The standby Pod claimed for `job` (by the claim annotation; owned Pods are indexed)."""
        uid = (job.get("metadata") or {}).get("uid")
        if self.pod_index is None or not uid:
            return None
        for entries in self.pod_index.values():
            for pod in entries:
                meta = pod.get("metadata") or {}
                dropped = (meta.get("namespace"), meta.get("name")) in self.pool.dropped
                if standby_mod.claimed_by(pod) == uid and not dropped and not meta.get("deletionTimestamp"):
                    return copy.deepcopy(dict(pod))
        return None

    async def resolve_job_type(self, job: dict[str, Any]) -> dict[str, Any] | None:
        name = objects.job_type_name(job)
        namespace = job["metadata"]["namespace"]
        if self.type_index is None:
            found = await self.kube.get_job_type(namespace, name)
        else:
            stored = list(self.type_index.get((namespace, name), []))
            found = copy.deepcopy(stored[-1]) if stored else None
        return objects.resolve_job_type(name, found, self.config.default_image)

    async def apply(self, job: dict[str, Any], observed: Observed, result: Plan) -> None:
        namespace, name = job_key(job)
        status = result.status
        await self.create_all(result.create)
        if result.claim is not None and observed.standby is not None:
            problem = await self.pool.claim(namespace, observed.standby, result.claim)
            if problem is not None:
                log.warning("job %s/%s: %s; trying again", namespace, name, problem)
                self.schedule((namespace, name), 0.05)
                return
        elif observed.standby is not None:
            self.pool.unreserve(namespace, observed.standby["metadata"]["name"])
        if result.annotations:
            answer = await self.kube.patch_job_metadata(namespace, name, {"annotations": result.annotations})
            if answer is not None:
                self.jobs.wrote(answer, result.annotations)
        if status and status_changed(job.get("status"), status):
            answer = await self.kube.patch_job_status(namespace, name, status)
            if answer is not None:
                self.jobs.wrote(answer, result.annotations)
        if result.remove_egress and observed.pod is not None:
            await self.kube.remove_pod_label(namespace, observed.pod["metadata"]["name"], EGRESS_LABEL)
            await self.kube.delete_network_policy(namespace, objects.install_policy_name(job))
        if result.delete_pod:
            await self.kube.delete_pod(namespace, result.delete_pod)
        if result.released:
            # The terminal record is stored and the Pod is gone: the slot is free now. Hand it on
            # before the events and the ConfigMap/policy cleanup below, not after them.
            async with self.admission_lock:
                self.admission.release((namespace, name))
            self.wake_queue()
        for event_type, reason, message in result.events:
            await self.kube.emit_event(job, reason, message, event_type)
        if result.cleanup:
            await self.cleanup(job)
        if result.delete_job:
            await self.kube.delete_job(namespace, name)
        elif result.requeue_after is not None:
            self.schedule((namespace, name), result.requeue_after)

    async def create_all(self, objs: list[dict[str, Any]]) -> None:
        """Create what the plan asks for: everything a Pod needs (its ConfigMaps and deny-all
        NetworkPolicy) at once, then the Pods, only once all of those exist (fail-closed: a Pod never
        exists before its policy). One API round trip less per job on the way to its Pod than
        creating them one after the other. The first failure is raised after every create ended."""
        first = [obj for obj in objs if obj.get("kind") != "Pod"]
        outcomes = await asyncio.gather(*(self.create(obj) for obj in first), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for obj in objs:
            if obj.get("kind") == "Pod":
                await self.create(obj)

    async def create(self, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        if kind == "ConfigMap" and obj["metadata"]["name"] == builders.runner_configmap_name():
            await self.kube.ensure_shared_configmap(obj)  # one per namespace, shared by every job
        elif kind == "Pod":
            await self.kube.create_pod(obj)
        elif kind == "ConfigMap":
            await self.kube.create_configmap(obj)
        elif kind == "NetworkPolicy":
            await self.kube.create_network_policy(obj)
        else:
            raise ValueError(f"unexpected object kind {kind!r} from the builders")

    async def cleanup(self, job: dict[str, Any]) -> None:
        """Delete what the job owned except the finished record (owner references do this on a
        real cluster too; doing it here frees resources at once and covers emulators)."""
        namespace = job["metadata"]["namespace"]
        for cm in objects.owned_configmap_names(job):
            await self.kube.delete_configmap(namespace, cm)
        for policy in objects.owned_policy_names(job):
            await self.kube.delete_network_policy(namespace, policy)

    async def forget(self, job: dict[str, Any]) -> None:
        """The PythonJob is gone (deleted = cancelled if it was running): remove what it owned."""
        key = job_key(job)
        status = job.get("status") or {}
        attempts = int(status.get("attempts") or 0)
        if attempts:
            await self.kube.delete_pod(key[0], status.get("podName") or objects.pod_name(job, attempts))
        await self.cleanup(job)
        async with self.admission_lock:
            self.admission.forget(key)
        handle = self.wakeups.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.webhooks.forget(key)
        self.api_failures.pop(key, None)
        self.jobs.forget(key)
        self.wake_queue()

    async def on_standby_event(self, namespace: str, pod: Mapping[str, Any]) -> None:
        """A standby Pod changed (claimed, finished, deleted): top its pool up again."""
        type_name = str(((pod.get("metadata") or {}).get("labels") or {}).get(standby_mod.LABEL_POOL))
        stored = list(self.type_index.get((namespace, type_name), [])) if self.type_index is not None else []
        found = stored[-1] if stored else None
        spec = dict(found.get("spec") or {}) if found else None
        uid = (found.get("metadata") or {}).get("uid") if found else None
        self.pool.saw_standby_pod(namespace, type_name)
        self.pool.refill_soon(namespace, type_name, spec, uid)
        if found is not None:
            await self.pool.report(namespace, type_name, copy.deepcopy(dict(found)))

    # -- completion webhooks (io/webhooks.py sends, core/webhooks.py decides) ------------------------

    def arm_webhook(self, key: Key, job: dict[str, Any]) -> None:
        """A finished job whose webhook is due (now or later): its attempt is timed."""
        delay = due_in(job, time.time())
        if delay is not None:
            self.webhooks.arm(key, delay, self.deliver_webhook)

    async def deliver_webhook(self, key: Key) -> float | None:
        """One attempt on the job as stored now (full, and with the newest ``status.webhook``); the
        outcome goes to the status before the next attempt is timed. The delay of that next attempt."""
        try:
            job = await self.kube.get_job(*key)
            if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
                return None
            if (due := due_in(job, time.time())) is None or due > 0:
                return due
            patch = await self.webhooks.attempt(job)
            if patch is None:
                return None
            answer = await self.kube.patch_job_status(*key, patch)
        except Exception as exc:
            if not retryable(exc):
                raise
            return api_retry_delay(self.config, 1)
        if answer is None:
            return None
        self.jobs.wrote(answer, {})
        return due_in(answer, time.time())

    # -- wake-ups ---------------------------------------------------------------------------------

    def schedule(self, key: Key, delay: float) -> None:
        old = self.wakeups.pop(key, None)
        if old is not None:
            old.cancel()
        # not in the calling handler's context: that would keep its kopf event alive with the timer
        self.wakeups[key] = detached.call_later(max(delay, 0.05), self._spawn_poke, key)

    def _spawn_poke(self, key: Key) -> None:
        self.wakeups.pop(key, None)
        task = detached.spawn(self.poke(*key))
        task.add_done_callback(_log_failure)

    def wake_queue(self) -> None:
        """A slot may be free: reconcile, right now, the oldest waiting jobs that the free slots
        admit (event-driven: no timer, no polling). Their own reconcile takes the admission
        decision under the lock, so a duplicate or stale wake-up admits nothing out of turn."""
        for key in self.admission.next_up(self.entries):
            pending = self.wakeups.pop(key, None)
            if pending is not None:
                pending.cancel()
            self._spawn_poke(key)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reconcile failed: %r", task.exception(), exc_info=task.exception())
