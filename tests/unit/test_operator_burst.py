"""What the operator keeps and does per job under a burst (issue #17 part 3): the Reconciler with a
recording stand-in for io/kube.py (no API server: these check ordering and bookkeeping, not HTTP;
the real operator against kmock is in tests/integration/test_operator_requests.py)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import pytest

from tako_operator.core.admission import entry_for
from tako_operator.io.metrics import Metrics
from tako_operator.reconciler import INDEX_KEY, KeyedLocks, Reconciler
from tako_operator.settings import Settings


class RecordingKube:
    """Records the order in which creates start and finish; `fail` names kinds whose create raises."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail = fail or set()
        self.deleted: list[tuple[str, str]] = []

    async def _create(self, obj: dict[str, Any]) -> bool:
        kind = obj["kind"]
        self.log.append(("start", kind))
        await asyncio.sleep(0.01)
        if kind in self.fail:
            raise RuntimeError(f"{kind} refused")
        self.log.append(("done", kind))
        return True

    create_pod = create_configmap = create_network_policy = _create

    async def ensure_shared_configmap(self, obj: dict[str, Any]) -> None:
        await self._create(obj)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        self.deleted.append(("Pod", name))
        return True

    async def delete_configmap(self, namespace: str, name: str) -> bool:
        self.deleted.append(("ConfigMap", name))
        return True

    async def delete_network_policy(self, namespace: str, name: str) -> bool:
        self.deleted.append(("NetworkPolicy", name))
        return True


def obj(kind: str, name: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns"}}


def job(name: str, attempts: int = 0, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "creationTimestamp": "t"},
        "spec": {"code": "print(1)"},
        "status": {"attempts": attempts, **status},
    }


def reconciler(kube: Any) -> Reconciler:
    return Reconciler(kube, Settings(), Metrics())


async def test_the_pod_is_created_only_after_its_configmaps_and_policy_exist() -> None:
    kube = RecordingKube()
    objs = [obj("ConfigMap", "code"), obj("NetworkPolicy", "deny"), obj("NetworkPolicy", "egress")]
    await reconciler(kube).create_all([*objs, obj("Pod", "pod")])
    pod_start = kube.log.index(("start", "Pod"))
    assert [e for e in kube.log[:pod_start] if e[0] == "done"] == [
        ("done", "ConfigMap"),
        ("done", "NetworkPolicy"),
        ("done", "NetworkPolicy"),
    ], kube.log
    # the three went out together (one round trip), not one after the other
    assert kube.log[:3] == [("start", "ConfigMap"), ("start", "NetworkPolicy"), ("start", "NetworkPolicy")]


async def test_no_pod_when_its_policy_could_not_be_created() -> None:
    kube = RecordingKube(fail={"NetworkPolicy"})
    with pytest.raises(RuntimeError, match="NetworkPolicy refused"):
        await reconciler(kube).create_all(
            [obj("ConfigMap", "code"), obj("NetworkPolicy", "deny"), obj("Pod", "p")]
        )
    assert ("start", "Pod") not in kube.log
    assert ("done", "ConfigMap") in kube.log, "the other creates still ran to their end"


class NoScan:
    """A job index that fails the test if anything lists it."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise AssertionError("the admission scanned every job for an already admitted one")


async def test_an_admitted_job_is_not_checked_against_every_other_job() -> None:
    r = reconciler(RecordingKube())
    r.job_index = NoScan()
    r.type_index = {}
    pod = {"metadata": {"name": "a-pod", "namespace": "ns"}, "spec": {}, "status": {"phase": "Pending"}}
    r.pod_index = {("ns", "a-pod"): [pod]}
    observed = await r.observe(job("a", attempts=1, podName="a-pod"))
    assert observed.admitted and observed.pod == pod


async def test_a_deleted_job_leaves_nothing_behind() -> None:
    """Every per-job structure of the Reconciler and its job cache is empty once the job is gone, so
    RSS stays flat over bursts of jobs that come and go (bench: the repeat burst)."""
    kube = RecordingKube()
    r = reconciler(kube)
    jobs = [job(f"j{i}", attempts=1, podName=f"j{i}-pod") for i in range(50)]
    r.job_index = {INDEX_KEY: [entry_for(j) for j in jobs]}
    loop = asyncio.get_running_loop()
    for j in jobs:
        key = ("ns", j["metadata"]["name"])
        r.jobs.observed(j)
        r.api_failures[key] = 1
        r.wakeups[key] = loop.call_later(60, lambda: None)
        r.admission.granted.add(key)
    for j in jobs:
        await r.forget(j)
    assert len(r.locks) == 0 and not r.api_failures and not r.wakeups
    assert len(r.jobs) == 0 and not r.jobs.unconfirmed
    assert not r.admission.granted and not r.admission.released
    assert ("Pod", "j7-pod") in kube.deleted


class Event:
    """Stands for kopf's per-event state (cause, body, patches) that a handler's context holds."""


EVENT: contextvars.ContextVar[Event] = contextvars.ContextVar("event")


async def test_a_wake_up_does_not_keep_the_event_that_scheduled_it() -> None:
    """A job's wake-up (its TTL: hours) is scheduled while kopf handles one of its events; asyncio runs
    a timer in a copy of the context it was created in, so the timer kept that event (kopf's cause with
    the watch body, in a context variable) alive, one per finished job, and a cancelled timer until the
    loop drops it. Timers and the tasks they start now run in an empty context (docs/performance.md,
    "Sixth round")."""
    r = reconciler(RecordingKube())
    seen: list[Event | None] = []

    async def poke(namespace: str, name: str) -> None:
        seen.append(EVENT.get(None))

    r.poke = poke  # type: ignore[method-assign]

    def handler() -> weakref.ref[Event]:  # what kopf's handler task does: the event in its context
        event = Event()
        EVENT.set(event)
        r.schedule(("ns", "ttl"), 3600)
        r.schedule(("ns", "soon"), 0.05)
        return weakref.ref(event)

    alive = contextvars.copy_context().run(handler)
    gc.collect()
    assert alive() is None, "a pending timer keeps the event of the handler that scheduled it"
    assert set(r.wakeups) == {("ns", "ttl"), ("ns", "soon")}
    await asyncio.sleep(0.2)
    assert seen == [None], "the poke ran without the scheduling handler's context"
    await r.forget(job("ttl"))
    assert not r.wakeups


async def test_per_job_locks_serialise_a_job_and_exist_only_while_in_use() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    tables: list[int] = []

    async def job_pass(key: str) -> None:
        async with locks.hold(key):
            inside[key] = inside.get(key, 0) + 1
            most[key] = max(most.get(key, 0), inside[key])
            tables.append(len(locks))
            await asyncio.sleep(0.001)
            inside[key] -= 1

    keys = [f"job-{i % 200}" for i in range(1000)]  # five passes per job, all at once
    await asyncio.gather(*(job_pass(key) for key in keys))
    assert set(most.values()) == {1}, "two passes of one job overlapped"
    assert max(tables) > 1, "different jobs were serialised against each other"
    assert max(tables) <= 200, "more locks than jobs in flight"
    assert len(locks) == 0, "finished jobs keep no lock"


async def test_a_lock_outlives_a_failing_pass_only_while_others_wait() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("a"):
            raise RuntimeError("pass failed")
    assert len(locks) == 0
