"""The operator's pure decision core: admission order and the reconcile plan (no kopf, no API)."""

from __future__ import annotations

import datetime
from typing import Any

from tako_operator.core.admission import Admission, Entry, admissible, entry_for
from tako_operator.core.plan import RETRY_AT, RETRY_ATTEMPT, Observed, backoff_seconds, plan
from tako_operator.settings import Limits
from tako_runner.outcome import frame_envelope
from tako_vm.models.crd import DEFAULT_JOB_TYPE

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
JOB_TYPE = DEFAULT_JOB_TYPE.model_dump(by_alias=True, exclude_none=True)


def job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"code": "print(1)", **spec},
        "status": status or {},
    }


def pod(phase: str = "Running", state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j-pod", "creationTimestamp": "2026-01-01T11:59:59Z", "labels": {}},
        "spec": {"runtimeClassName": "gvisor"},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "job", "state": state or {"running": {}}}],
            **status,
        },
    }


def observe(j: dict[str, Any], **kw: Any) -> Observed:
    kw.setdefault("admitted", True)
    kw.setdefault("job_type", JOB_TYPE)
    return Observed(
        job=j, now=kw.pop("now", NOW), limits=kw.pop("limits", Limits(retry_backoff_seconds=1)), **kw
    )


# -- admission ----------------------------------------------------------------------------------


def entry(name: str, created: str, admitted: bool = False, terminal: bool = False) -> Entry:
    return Entry(created=created, namespace="ns", name=name, admitted=admitted, terminal=terminal)


def test_admission_is_in_creation_order_and_bounded() -> None:
    entries = [entry("c", "3"), entry("a", "1"), entry("b", "2"), entry("d", "4")]
    assert admissible(entries, set(), set(), limit=2) == [("ns", "a"), ("ns", "b")]
    adm = Admission(limit=2)
    assert not adm.decide(("ns", "c"), entries), "c may not jump ahead of a and b"
    assert adm.decide(("ns", "a"), entries) and adm.decide(("ns", "b"), entries)
    assert not adm.decide(("ns", "d"), entries)
    adm.release(("ns", "a"))
    assert adm.decide(("ns", "c"), entries)


def test_admission_counts_jobs_admitted_before_a_restart() -> None:
    entries = [entry("old", "1", admitted=True), entry("new", "2")]
    assert not Admission(limit=1).decide(("ns", "new"), entries)
    finished = [entry("old", "1", admitted=True, terminal=True), entry("new", "2")]
    assert Admission(limit=1).decide(("ns", "new"), finished)


def test_entry_for_reads_status() -> None:
    e = entry_for(job({"phase": "Running", "attempts": 1}))
    assert e.admitted and not e.terminal and e.phase == "Running"


# -- plan ---------------------------------------------------------------------------------------


def test_not_admitted_is_queued_once() -> None:
    result = plan(observe(job(), admitted=False))
    assert result.status["phase"] == "Queued" and not result.create
    again = plan(observe(job(result.status), admitted=False))
    assert again.status == {} and not again.events, "no rewrite when nothing changed"


def test_admitted_creates_policies_before_the_pod() -> None:
    result = plan(observe(job()))
    kinds = [o["kind"] for o in result.create]
    assert kinds[-1] == "Pod" and "NetworkPolicy" in kinds
    assert kinds.index("NetworkPolicy") < kinds.index("Pod")
    assert result.status["attempts"] == 1 and result.status["podName"] == "j-pod"


def test_finished_container_is_classified_and_pod_deleted() -> None:
    log = frame_envelope({"v": 1, "exit_code": 0, "stdout": "1\n", "stderr": ""})
    terminated = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    result = plan(
        observe(job({"phase": "Running", "attempts": 1}), pod=pod("Succeeded", terminated), logs={"job": log})
    )
    assert result.status["phase"] == "Succeeded" and result.status["stdout"] == "1\n"
    assert result.delete_pod == "j-pod" and result.cleanup and result.released


def test_oom_and_deadline() -> None:
    oom = plan(
        observe(
            job({"attempts": 1}), pod=pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
        )
    )
    assert oom.status["phase"] == "OOM"
    deadline = plan(observe(job({"attempts": 1}), pod=pod("Failed", reason="DeadlineExceeded")))
    assert deadline.status["phase"] == "Timeout"


def test_operator_side_bound_times_out_a_hung_pod() -> None:
    late = NOW + datetime.timedelta(seconds=10 + 120 + 30 + 5)
    result = plan(observe(job({"attempts": 1}, timeoutSeconds=10), pod=pod(), now=late))
    assert result.status["phase"] == "Timeout" and result.delete_pod == "j-pod"


def test_eviction_schedules_a_retry_with_backoff_then_creates_attempt_2() -> None:
    evicted = pod("Failed", reason="Evicted")
    first = plan(observe(job({"phase": "Running", "attempts": 1}), pod=evicted))
    assert first.status["phase"] == "Pending" and first.delete_pod == "j-pod" and not first.create
    assert first.annotations[RETRY_ATTEMPT] == "2" and first.requeue_after == 1.0
    scheduled = job({"phase": "Pending", "attempts": 1})
    scheduled["metadata"]["annotations"] = dict(first.annotations)
    waiting = plan(observe(scheduled, pod=None))
    assert not waiting.create and waiting.requeue_after is not None
    later = NOW + datetime.timedelta(seconds=2)
    second = plan(observe(scheduled, pod=None, now=later))
    assert second.create[-1]["metadata"]["name"] == "j-pod-a2" and second.status["attempts"] == 2


def test_infrastructure_retries_are_bounded_and_user_failures_never_retried() -> None:
    gone = plan(observe(job({"phase": "Running", "attempts": 3}), pod=None, limits=Limits(max_attempts=3)))
    assert gone.status["phase"] == "Failed" and gone.status["error"]["type"] == "infrastructure_error"
    log = frame_envelope(
        {"v": 1, "exit_code": 1, "stdout": "", "stderr": "NameError: name 'x' is not defined\n"}
    )
    failed = plan(
        observe(
            job({"attempts": 1}), pod=pod("Succeeded", {"terminated": {"exitCode": 0}}), logs={"job": log}
        )
    )
    assert failed.status["phase"] == "Failed" and failed.status["error"]["type"] == "name_error"
    assert not failed.create and not failed.annotations


def test_cancel_unknown_type_and_rejected_requirements() -> None:
    assert plan(observe(job(cancel=True), admitted=False)).status["phase"] == "Cancelled"
    unknown = plan(observe(job(jobType="nope"), job_type=None))
    assert (
        unknown.status["error"]["type"] == "config_error" and "'nope'" in unknown.status["error"]["message"]
    )
    refused = plan(observe(job(requirements=["six"])))
    assert refused.status["phase"] == "Failed" and "spec.requirements" in refused.status["error"]["message"]
    assert not refused.create


def test_install_end_closes_egress_and_ttl_deletes() -> None:
    p = pod("Pending")
    p["metadata"]["labels"] = {"takovm.dev/egress": "install"}
    p["status"]["initContainerStatuses"] = [{"name": "install", "state": {"terminated": {"exitCode": 0}}}]
    assert plan(observe(job({"phase": "Pending", "attempts": 1}), pod=p)).remove_egress
    done = job({"phase": "Succeeded", "finishedAt": "2026-01-01T11:00:00Z"}, ttlSecondsAfterFinished=60)
    assert plan(observe(done)).delete_job
    fresh = job({"phase": "Succeeded", "finishedAt": "2026-01-01T11:59:30Z"}, ttlSecondsAfterFinished=60)
    kept = plan(observe(fresh))
    assert not kept.delete_job and kept.requeue_after == 30.0


def test_backoff_grows_and_is_capped() -> None:
    limits = Limits(retry_backoff_seconds=2, retry_backoff_max_seconds=5)
    assert [backoff_seconds(a, limits) for a in (1, 2, 3)] == [2, 4, 5]
    assert RETRY_AT.startswith("takovm.dev/")


def test_entries_differ_when_status_changes() -> None:
    """kopf's index keeps a new value only if it differs: a phase change must make entries unequal."""
    assert entry_for(job({"phase": "Queued"})) != entry_for(job({"phase": "Running", "attempts": 1}))


def test_a_spec_change_on_a_finished_job_is_observed_and_changes_nothing_else() -> None:
    """spec.cancel set after the end bumps metadata.generation: the operator records the generation
    (top level and every condition), so kstatus, Argo CD and kubectl wait do not wait for it forever."""
    running = plan(observe(job({"phase": "Running", "attempts": 1}), pod=pod())).status
    done = plan(observe(job(running), pod=pod("Succeeded", {"terminated": {"exitCode": 0}})))
    finished = {**running, **done.status}
    assert finished["phase"] == "Failed" and finished["observedGeneration"] == 1  # no envelope: failed
    cancelled_late = job(finished, cancel=True)
    cancelled_late["metadata"]["generation"] = 2
    result = plan(observe(cancelled_late))
    assert set(result.status) == {"observedGeneration", "conditions"}
    assert result.status["observedGeneration"] == 2
    assert [c["observedGeneration"] for c in result.status["conditions"]] == [2] * len(finished["conditions"])
    assert [(c["type"], c["status"]) for c in result.status["conditions"]] == [
        (c["type"], c["status"]) for c in finished["conditions"]
    ]
    again = job({**finished, **result.status}, cancel=True)
    again["metadata"]["generation"] = 2
    assert plan(observe(again)).status == {}, "observed once"
