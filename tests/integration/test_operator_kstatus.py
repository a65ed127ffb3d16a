"""What kstatus (Flux), `kubectl wait` and Argo CD make of PythonJobs the real operator wrote.

The real operator (kopf) drives jobs through every state against kmock, with the fake kubelet playing
the Pods; each object is read back as the operator left it and judged by kstatus's documented rules,
by kubectl wait's condition check and by the Argo CD Lua health check (status_readers.py).

The Argo CD test inputs in gitops/argocd/health/takovm.dev/PythonJob/testdata/ are these objects (times,
uids and names normalised): this test checks that every committed input carries exactly the phase
and conditions the operator writes today. `TAKO_WRITE_GITOPS_TESTDATA=1` rewrites them, and the
expected messages in health_test.yaml, from a run.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import yaml
from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, envelope, sample_job, wait_phase
from status_readers import HEALTH_DIR, argo_health, kstatus, kubectl_wait_met

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TESTDATA = HEALTH_DIR / "testdata"
FIXED_TIME = "2026-11-28T09:00:00Z"

# state -> (kstatus, Argo CD health, `kubectl wait --for=condition=Ready`, `...=Finished`)
EXPECTED: dict[str, tuple[str, str, bool, bool]] = {
    "no-status": ("Current", "Progressing", False, False),  # the window before the operator's first pass
    "queued": ("InProgress", "Progressing", False, False),
    "pending": ("InProgress", "Progressing", False, False),
    "running": ("InProgress", "Progressing", False, False),
    "cancelling": ("InProgress", "Progressing", False, False),
    "stale-generation": ("InProgress", "Progressing", False, False),
    "succeeded": ("Current", "Healthy", True, True),
    "failed": ("Failed", "Degraded", False, True),
    "timeout": ("Failed", "Degraded", False, True),
    "oom": ("Failed", "Degraded", False, True),
    "cancelled": ("Failed", "Degraded", False, True),
    "cancelled-after-finish": ("Current", "Healthy", True, True),
}


def job_state(kube: KubeHarness, name: str) -> dict[str, Any]:
    found = kube.get("pythonjobs", name)
    assert found is not None, name
    return found


def observed(kube: KubeHarness, name: str) -> dict[str, Any]:
    """The job once the operator recorded its current generation."""

    def current() -> dict[str, Any] | None:
        obj = job_state(kube, name)
        generation = obj["metadata"].get("generation")
        return obj if (obj.get("status") or {}).get("observedGeneration") == generation else None

    found: dict[str, Any] = wait_for(current, timeout=30, what=f"{name}'s generation observed")
    return found


def normalised(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """The object as a committed test input: no uid/times/pod names that differ per run."""
    status = copy.deepcopy(obj.get("status") or {})
    for key in ("queuedAt", "startedAt", "finishedAt"):
        if key in status:
            status[key] = FIXED_TIME
    for condition in status.get("conditions") or []:
        condition["lastTransitionTime"] = FIXED_TIME
    out: dict[str, Any] = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": name, "namespace": "tako-jobs", "generation": obj["metadata"]["generation"]},
        "spec": obj["spec"],
    }
    if status:
        out["status"] = status
    return out


def shape(obj: dict[str, Any]) -> tuple[Any, ...]:
    status = obj.get("status") or {}
    conditions = [
        (c["type"], c["status"], c["reason"], c.get("observedGeneration"))
        for c in status.get("conditions") or []
    ]
    return (
        obj["metadata"].get("generation"),
        status.get("phase"),
        status.get("observedGeneration"),
        conditions,
    )


def test_every_state_reads_right_in_kstatus_kubectl_wait_and_argo_cd(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    states: dict[str, dict[str, Any]] = {}
    kube.create("pythonjobs", sample_job("no-status"))
    states["no-status"] = job_state(kube, "no-status")  # created before any operator runs
    kube.delete("pythonjobs", "no-status")

    run_operator(max_concurrent=2)
    kube.create("pythonjobs", sample_job("running"))
    running_pod = kubelet.wait_pod("running")["metadata"]["name"]
    kubelet.run(running_pod)
    states["running"] = wait_phase(kube, "running", "Running")
    kube.create("pythonjobs", sample_job("pending"))
    pending_pod = kubelet.wait_pod("pending")["metadata"]["name"]
    states["pending"] = wait_phase(kube, "pending", "Pending")
    kube.create("pythonjobs", sample_job("queued"))
    states["queued"] = wait_phase(kube, "queued", "Queued")

    # What the API server makes of a running job whose spec.cancel was just set (generation 2),
    # before the operator saw it.
    cancelling = copy.deepcopy(states["running"])
    cancelling["spec"]["cancel"] = True
    cancelling["metadata"]["generation"] += 1
    states["cancelling"] = cancelling
    stale = copy.deepcopy(cancelling)
    stale["spec"].pop("cancel")
    states["stale-generation"] = stale

    kubelet.terminate(running_pod, 0, envelope(0, "job succeeded\n"))
    states["succeeded"] = wait_phase(kube, "running", "Succeeded")
    stderr = "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"
    kubelet.terminate(pending_pod, 0, envelope(1, "", stderr))
    states["failed"] = wait_phase(kube, "pending", "Failed")
    queued_pod = kubelet.wait_pod("queued")["metadata"]["name"]  # admitted once a slot freed
    kubelet.terminate(queued_pod, 137, None, reason="OOMKilled")
    states["oom"] = wait_phase(kube, "queued", "OOM")
    kube.create("pythonjobs", sample_job("slow"))
    slow_pod = kubelet.wait_pod("slow")["metadata"]["name"]
    timeout = envelope(
        -9, "partial\n", error={"type": "execution_timeout", "message": "execution exceeded 5s"}
    )
    kubelet.terminate(slow_pod, 0, timeout)
    states["timeout"] = wait_phase(kube, "slow", "Timeout")
    kube.create("pythonjobs", sample_job("stop"))
    kubelet.run(kubelet.wait_pod("stop")["metadata"]["name"])
    wait_phase(kube, "stop", "Running")
    kube.patch("pythonjobs", "stop", {"spec": {"cancel": True}})
    states["cancelled"] = wait_phase(kube, "stop", "Cancelled")

    # spec.cancel on a finished job: the API server bumps the generation; the operator records it.
    kube.patch("pythonjobs", "running", {"spec": {"cancel": True}})
    after = observed(kube, "running")
    assert after["metadata"]["generation"] == 2
    assert after["status"]["phase"] == "Succeeded", "a finished record never changes its outcome"
    assert all(c["observedGeneration"] == 2 for c in after["status"]["conditions"])
    states["cancelled-after-finish"] = after

    for name, obj in states.items():
        verdict, health, ready, finished = EXPECTED[name]
        if name not in ("no-status", "cancelling", "stale-generation"):
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"], name
            assert all(
                c["observedGeneration"] == obj["metadata"]["generation"] for c in obj["status"]["conditions"]
            ), name
        assert kstatus(obj) == verdict, name
        assert argo_health(obj)["status"] == health, name
        assert kubectl_wait_met(obj, "Ready") is ready, name
        assert kubectl_wait_met(obj, "Finished") is finished, name
    # kubectl wait --for=condition=Succeeded=false ends for every job that did not succeed.
    assert all(
        kubectl_wait_met(states[s], "Succeeded", "false") for s in ("failed", "timeout", "oom", "cancelled")
    )

    if os.environ.get("TAKO_WRITE_GITOPS_TESTDATA") == "1":
        _write_testdata(states)
    for name, obj in states.items():
        committed = yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())
        assert shape(committed) == shape(normalised(obj, name)), (
            f"testdata/{name}.yaml is not what the operator writes; rerun with TAKO_WRITE_GITOPS_TESTDATA=1"
        )


def _write_testdata(states: dict[str, dict[str, Any]]) -> None:
    cases = []
    for name, obj in states.items():
        clean = normalised(obj, name)
        path = TESTDATA / f"{name}.yaml"
        path.write_text(yaml.safe_dump(clean, sort_keys=False))
        cases.append({"healthStatus": argo_health(clean), "inputPath": f"testdata/{name}.yaml"})
    header = (
        "# Argo CD's resource-customization test format (as in argo-cd's resource_customizations/):\n"
        "# each case feeds testdata/<input> to health.lua and expects this status and message.\n"
        "# The inputs are objects the real operator wrote (tests/integration/test_operator_kstatus.py);\n"
        "# tests/unit/test_argocd_health.py runs them with a real Lua runtime (lupa).\n"
    )
    (HEALTH_DIR / "health_test.yaml").write_text(header + yaml.safe_dump({"tests": cases}, sort_keys=False))


def job_type(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJobType",
        "metadata": {"name": name},
        "spec": {"image": "python:3.11-slim", **spec},
    }


def type_conditions(kube: KubeHarness, name: str) -> dict[str, str]:
    status = (kube.get("pythonjobtypes", name) or {}).get("status") or {}
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def test_a_job_type_is_ready_when_usable_in_kstatus_terms(kube: KubeHarness, run_operator: Any) -> None:
    """PythonJobType status as the operator writes it: Ready=True for a usable type (its standby pool,
    if any, full), Reconciling=True while the pool fills, Stalled=True for a spec it cannot use."""
    run_operator()
    kube.create("pythonjobtypes", job_type("plain"))
    kube.create("pythonjobtypes", job_type("broken", image="no spaces allowed"))  # kmock skips the schema
    kube.create("pythonjobtypes", job_type("warm", standbyPods=1))
    wait_for(lambda: type_conditions(kube, "plain").get("Ready") == "True", what="plain Ready")
    wait_for(lambda: type_conditions(kube, "broken").get("Stalled") == "True", what="broken Stalled")
    wait_for(lambda: type_conditions(kube, "warm").get("Reconciling") == "True", what="warm filling")
    verdicts = {name: kstatus(job_state_of(kube, name)) for name in ("plain", "broken", "warm")}
    assert verdicts == {"plain": "Current", "broken": "Failed", "warm": "InProgress"}
    assert "spec.image" in _condition(kube, "broken", "Stalled")["message"]
    assert _condition(kube, "warm", "Ready")["message"] == "0 of 1 standby Pods ready"

    (standby,) = wait_for(lambda: kube.list("pods"), what="the standby Pod")
    kube.patch_status(
        "pods",
        standby["metadata"]["name"],
        {"phase": "Running", "podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    )
    wait_for(
        lambda: type_conditions(kube, "warm").get("Ready") == "True", what="warm Ready once its pool is full"
    )
    warm = job_state_of(kube, "warm")
    assert kstatus(warm) == "Current" and kubectl_wait_met(warm, "Ready")
    assert "Reconciling" not in type_conditions(kube, "warm"), "abnormal-true: dropped once False"
    for name in ("plain", "broken", "warm"):
        obj = job_state_of(kube, name)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


def job_state_of(kube: KubeHarness, name: str) -> dict[str, Any]:
    found = kube.get("pythonjobtypes", name)
    assert found is not None
    return found


def _condition(kube: KubeHarness, name: str, kind: str) -> dict[str, Any]:
    (found,) = [c for c in job_state_of(kube, name)["status"]["conditions"] if c["type"] == kind]
    return found
