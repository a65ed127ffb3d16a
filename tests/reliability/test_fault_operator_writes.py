"""API-server faults on the operator's writes (the real operator, kopf, against kmock).

Two ways a write can fail, both injected a few times on Pod creates, ConfigMap creates and PythonJob
status patches, then the API recovers:

- **Refused, not persisted** (a 500 from an overloaded API server, a 409 Conflict): a real HTTP proxy
  in front of kmock (``reliability_support.FaultProxy``) answers the request itself and never
  forwards it. kmock cannot inject this: it applies every create and patch before any of its
  reactions answers.
- **Persisted, then a 500** (the API server timed out after etcd stored the write): a kmock reaction
  (``reliability_support.inject``), which is exactly what kmock does with a reaction on a write.

kmock has no kubelet, so ``operator_support.FakeKubelet`` runs each Pod to completion by patching
its status and storing its log. The promise: every job still ends with exactly one Pod (attempt 1,
its deterministic name) and the correct terminal status (``Succeeded`` with its own stdout), and every
injected fault was served.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, OperatorThread, operator_options, sample_job, wait_phase
from reliability_support import FaultProxy, api_status, inject, proxied_kubeconfig

pytestmark = pytest.mark.slow

INTERNAL = api_status(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
CONFLICT = api_status(
    409,
    "Conflict",
    "Operation cannot be fulfilled: the object has been modified; please apply your changes to the "
    "latest version and try again",
)
JOBS = ("write-fault-a", "write-fault-b", "write-fault-c")
# what -> (method, path regex, body regex) of the refused writes
REFUSED = {
    "pod create": ("POST", r"/api/v1/namespaces/[^/]+/pods$", r'"name": ?"write-fault-b-pod"'),
    "configmap create": ("POST", r"/api/v1/namespaces/[^/]+/configmaps$", r'"name": ?"write-fault-a-code"'),
    "status patch": (
        "PATCH",
        r"/apis/takovm\.dev/v1alpha1/namespaces/[^/]+/pythonjobs/write-fault-c/status$",
        "",
    ),
}
WATCH_SECONDS = 300
FAULTS_PER_WRITE = {"pod create": 2, "configmap create": 2, "status patch": 3}


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def run_jobs(kube: KubeHarness, tmp_path: Path, kubeconfig: str | None = None) -> dict[str, dict[str, Any]]:
    """Start the operator, run JOBS through it with the fake kubelet, return their final objects."""
    # A long watch: kmock replays every object as ADDED on each re-watch (a real API server resumes
    # from the resourceVersion and replays nothing), which would hide a write that is never retried.
    options = operator_options(kube, tmp_path, watch_server_timeout=WATCH_SECONDS)
    if kubeconfig is not None:
        options.kubeconfig = kubeconfig
    operator = OperatorThread(options).start()
    try:
        for name in JOBS:
            kube.create("pythonjobs", sample_job(name, code=f"print({name!r})"))
        kubelet = FakeKubelet(kube)
        for name in JOBS:
            pod = kubelet.wait_pod(name, timeout=30)
            wait_for_mounted_configmaps(kube, pod)
            kubelet.succeed(pod["metadata"]["name"], stdout=f"{name}\n")
        records = {name: wait_phase(kube, name, "Succeeded", timeout=30) for name in JOBS}
        time.sleep(2)  # a duplicate Pod or a second attempt would show by now
    finally:
        operator.stop()
    assert_nothing_left_behind(kube)
    return records


def assert_nothing_left_behind(kube: KubeHarness) -> None:
    """No orphans: each finished job's Pod, code ConfigMap and policies are gone (only the shared
    runner ConfigMap stays)."""
    assert [p["metadata"]["name"] for p in kube.list("pods")] == []
    left = [c["metadata"]["name"] for c in kube.list("configmaps")]
    assert all(name.startswith("tako-runner-") for name in left), left
    assert [n["metadata"]["name"] for n in kube.list("networkpolicies")] == []


def wait_for_mounted_configmaps(kube: KubeHarness, pod: dict[str, Any]) -> None:
    """What a kubelet does: a Pod starts only once every ConfigMap it mounts exists (a ConfigMap
    create that failed and was never retried would leave the Pod in ContainerCreating for good)."""
    names = [v["configMap"]["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v]
    assert names, pod["spec"]
    wait_for(
        lambda: all(kube.get("configmaps", name) for name in names),
        timeout=15,
        what=f"the ConfigMaps {names} that Pod {pod['metadata']['name']} mounts",
    )


def assert_each_job_ended_once(records: dict[str, dict[str, Any]], pods_created: list[str]) -> None:
    assert sorted(pods_created) == sorted(f"{name}-pod" for name in JOBS), pods_created
    for name, job in records.items():
        status = job["status"]
        assert status["stdout"] == f"{name}\n", status
        assert status["exitCode"] == 0 and status["attempts"] == 1, status
        assert status["podName"] == f"{name}-pod", status


def refused_writes(kube: KubeHarness, tmp_path: Path, fault: tuple[int, dict[str, Any]]) -> None:
    """Each kind of write is refused for a different job, so that one fault's retry cannot mask
    another's: job a's code ConfigMap, job b's Pod, job c's status."""
    with FaultProxy(kube.url) as proxy:
        served = {
            what: proxy.fail(method, path, [fault] * FAULTS_PER_WRITE[what], body_regex=body)
            for what, (method, path, body) in REFUSED.items()
        }
        records = run_jobs(kube, tmp_path, proxied_kubeconfig(kube, proxy, tmp_path))
    assert {what: len(paths) for what, paths in served.items()} == FAULTS_PER_WRITE
    assert_each_job_ended_once(records, kube.pod_order)


def test_500_refusing_pod_and_configmap_creates_and_status_patches_then_every_job_ends_once(
    kube: KubeHarness, tmp_path: Path
) -> None:
    refused_writes(kube, tmp_path, (500, INTERNAL))


def test_409_conflict_on_pod_and_configmap_creates_and_status_patches_then_every_job_ends_once(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """A 409 Conflict is not AlreadyExists: nothing was created, and the operator must not take the
    409 as 'it exists already' (it checks by reading the object)."""
    refused_writes(kube, tmp_path, (409, CONFLICT))


def test_500_after_the_write_was_persisted_then_every_job_ends_once(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """The ambiguous case: the write landed but the client got a 500. Retrying the create meets
    AlreadyExists (the deterministic name), retrying the status patch rewrites the same status."""
    criteria: dict[str, Callable[[], Any]] = {
        "pod create": lambda: (kmock.action.CREATE, kmock.resource("v1/pods")),
        "configmap create": lambda: (kmock.action.CREATE, kmock.resource("v1/configmaps")),
        # kmock names both PATCH and PUT "UPDATE"
        "status patch": lambda: (
            kmock.action.UPDATE,
            kmock.resource("takovm.dev/v1alpha1/pythonjobs"),
            kmock.subresource("status"),
        ),
    }
    served = {
        what: inject(kube, make(), [(500, INTERNAL)] * FAULTS_PER_WRITE[what])
        for what, make in criteria.items()
    }
    records = run_jobs(kube, tmp_path)
    assert {what: len(requests) for what, requests in served.items()} == FAULTS_PER_WRITE
    # kube.pod_order counts creates that got a 2xx; a persisted-then-500 create is in the store too.
    persisted = sorted(set(kube.pod_order) | {str(r.data["metadata"]["name"]) for r in served["pod create"]})
    assert_each_job_ended_once(records, persisted)
