"""The shim's kubernetes backend over HTTP: real shim app (aiohttp) -> kmock API -> real operator (kopf).

kmock has no kubelet: the conftest's `FakeKubelet` moves Pods through their states (fast semantics);
tests/integration/test_full_path.py runs the same path with real gVisor sandboxes. kmock applies no
label selectors, so the job-type filter is checked client-side too (see backends/kubernetes/translate.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, wait_phase

from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.http.app import create_app

pytestmark = [pytest.mark.timeout(90)]

KEY_A = "tenant-a-key-0123456789"
KEY_B = "tenant-b-key-0123456789"
OTHER_NAMESPACE = "tako-other"


def shim_settings(kube: KubeHarness, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        backend="kubernetes",
        api_rate_limit_enabled=False,
        kubernetes=KubernetesOptions(
            namespace=kube.namespace,
            kubeconfig=str(kube.kubeconfig(tmp_path)),
            tenant_namespaces=overrides.pop("tenant_namespaces", {}),
        ),
        data_dir=tmp_path / "unused-data-dir",
        **overrides,
    )


class Shim:
    """A running shim (aiohttp on a loopback port) and an HTTP client for it."""

    def __init__(self, server: TestServer, backend: KubernetesBackend, headers: dict[str, str]) -> None:
        self.server = server
        self.backend = backend
        self.http = httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30, headers=headers)

    async def submit(self, **body: Any) -> str:
        response = await self.http.post("/execute/async", json=body)
        assert response.status_code == 200, response.text
        job_id: str = response.json()["job_id"]
        return job_id


@pytest.fixture
async def start_shim(kube: KubeHarness, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Shim] = []

    async def start(headers: dict[str, str] | None = None, **overrides: Any) -> Shim:
        settings = shim_settings(kube, tmp_path, **overrides)
        backend = KubernetesBackend(settings)
        server = TestServer(create_app(settings, backend), host="127.0.0.1")
        await server.start_server()
        shim = Shim(server, backend, headers or {})
        started.append(shim)
        return shim

    yield start
    for shim in started:
        await shim.http.aclose()
        await shim.server.close()


def shim_requests(kube: KubeHarness) -> list[Any]:
    """The requests the emulator served to the shim (kmock records them; the harness keeps the emulator
    private, so this reaches in)."""
    return [r for r in kube._emulator if r.headers.get("User-Agent") == "tako-shim"]


def job_type_object(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJobType",
        "metadata": {"name": name},
        "spec": {"image": "registry.example/ds:1", **spec},
    }


def pod_of(kube: KubeHarness, kubelet: FakeKubelet, job: str) -> str:
    return str(kubelet.wait_pod(job)["metadata"]["name"])


async def test_submit_creates_a_pythonjob_and_the_result_comes_back(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    job_id = await shim.submit(code="print('hi')", input_data={"n": 1}, timeout=20)

    job = kube.get("pythonjobs", job_id)
    assert job is not None, "the job id is the PythonJob's name"
    assert job["spec"]["code"] == "print('hi')" and job["spec"]["inputData"] == {"n": 1}
    assert job["spec"]["timeoutSeconds"] == 20 and job["spec"]["jobType"] == "default"
    assert job["metadata"]["labels"]["takovm.dev/job-type"] == "default"

    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)
    status = (await shim.http.get(f"/jobs/{job_id}")).json()
    assert status["status"] in {"pending", "running"}
    await asyncio.to_thread(kubelet.succeed, pod, "hi\n", {"answer": 42})

    result = await shim.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})
    assert result.status_code == 200, result.text
    record = result.json()
    assert record["status"] == "succeeded" and record["stdout"] == "hi\n"
    assert record["output"] == {"answer": 42} and record["exit_code"] == 0
    assert record["execution_id"] == job_id and record["job_type"] == "default"
    assert (await shim.http.get(f"/jobs/{job_id}")).json()["status"] == "succeeded"


async def test_sync_execute_goes_through_a_pythonjob(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    reply = asyncio.create_task(shim.http.post("/execute", json={"code": "print('sync')"}))
    job = await asyncio.to_thread(wait_for, lambda: kube.list("pythonjobs"), 30, 0.1, "the PythonJob")
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job[0]["metadata"]["name"])
    await asyncio.to_thread(kubelet.succeed, pod, "sync\n")
    body = (await reply).json()
    assert body["success"] is True and body["stdout"] == "sync\n"
    assert body["execution_id"] == job[0]["metadata"]["name"] and body["runtime"] == "gvisor"


async def test_long_poll_wakes_from_the_watch_and_expires_with_408(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    job_id = await shim.submit(code="print(1)")
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)

    started = time.monotonic()
    expired = await shim.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 1})
    assert expired.status_code == 408 and 0.9 < time.monotonic() - started < 5

    waiters = [
        asyncio.create_task(shim.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30}))
        for _ in range(5)
    ]
    for _ in range(200):  # the five requests reach the shim and subscribe (polled: no hook to wait on)
        if shim.backend.watch.waiter_count() == 5:
            break
        await asyncio.sleep(0.05)
    assert shim.backend.watch.waiter_count() == 5
    finished_at = time.monotonic()
    await asyncio.to_thread(kubelet.succeed, pod, "1\n")
    replies = await asyncio.gather(*waiters)
    assert [r.json()["stdout"] for r in replies] == ["1\n"] * 5
    assert time.monotonic() - finished_at < 10, "woken by the watch, not by the 30 s wait expiring"
    stats = shim.backend.watch.stats[kube.namespace]
    assert stats.streams_opened == 1, "one shared watch for every waiter in the namespace"
    watches = [r for r in shim_requests(kube) if r.params.get("watch") == "true"]
    assert len(watches) == 1, "the API server saw one watch request"
    assert shim.backend.watch.waiter_count() == 0


async def test_any_replica_answers_the_long_poll(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    first, second = await start_shim(), await start_shim()
    job_id = await first.submit(code="print('r')")
    await first.server.close()  # the replica that took the job is gone: nothing lived in its memory
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)
    waiting = asyncio.create_task(
        second.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})
    )
    await asyncio.sleep(0.5)
    await asyncio.to_thread(kubelet.succeed, pod, "r\n")
    reply = await waiting
    assert reply.status_code == 200 and reply.json()["stdout"] == "r\n"


async def test_failure_is_reported_with_error_type(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    from operator_support import envelope

    run_operator()
    shim = await start_shim()
    job_id = await shim.submit(code="1/0")
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)
    trace = (
        'Traceback (most recent call last):\n  File "/code/main.py", line 1\n'
        "ZeroDivisionError: division by zero\n"
    )
    await asyncio.to_thread(kubelet.run, pod)
    # The runner itself exits 0 after framing the user's exit code (a non-zero runner is not trusted).
    await asyncio.to_thread(kubelet.terminate, pod, 0, envelope(1, "", trace))
    record = (await shim.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})).json()
    assert record["status"] == "failed" and record["exit_code"] == 1, json.dumps(record)
    assert "ZeroDivisionError" in record["stderr"]
    assert record["error"]["type"] == "division_error"


async def test_idempotent_replay_returns_the_same_job_and_a_changed_payload_is_409(
    kube: KubeHarness, start_shim: Any
) -> None:
    shim = await start_shim()
    body = {"code": "print('once')", "idempotency_key": "order-12345"}
    first = await shim.http.post("/execute/async", json=body)
    again = await shim.http.post("/execute/async", json=body)
    assert first.status_code == again.status_code == 200
    assert first.json()["job_id"] == again.json()["job_id"]
    assert kube.creations("pythonjobs") == 2, "the retry reached the API and met 409 AlreadyExists"
    assert len(kube.list("pythonjobs")) == 1, "and created nothing"
    sent = shim_requests(kube)
    assert sent and all(r.headers.get("Authorization") == "Bearer test-token" for r in sent), (
        "every API call carries the kubeconfig's token"
    )
    job = kube.get("pythonjobs", first.json()["job_id"])
    assert job is not None and job["metadata"]["annotations"]["takovm.dev/fingerprint"]
    assert job["spec"]["idempotencyKey"] == "order-12345"

    changed = await shim.http.post("/execute/async", json={**body, "code": "print('twice')"})
    assert changed.status_code == 409
    assert changed.json()["detail"] == "Idempotency key reused with different payload"


async def test_tenants_are_namespaces_and_never_see_each_other(kube: KubeHarness, start_shim: Any) -> None:
    common = {
        "api_auth_enabled": True,
        "api_keys": {KEY_A: "tenant-a", KEY_B: "tenant-b"},
        "tenant_namespaces": {"tenant-a": kube.namespace, "tenant-b": OTHER_NAMESPACE},
    }
    a = await start_shim(headers={"X-API-Key": KEY_A}, **common)
    b = await start_shim(headers={"X-API-Key": KEY_B}, **common)
    job_a = await a.submit(code="print('a')", idempotency_key="shared-key-1")
    job_b = await b.submit(code="print('a')", idempotency_key="shared-key-1")
    assert job_a != job_b, "idempotency keys are scoped per tenant"
    assert kube.get("pythonjobs", job_a) is not None
    assert kube.get("pythonjobs", job_b, namespace=OTHER_NAMESPACE) is not None

    for path in (f"/jobs/{job_a}", f"/jobs/{job_a}/result", f"/executions/{job_a}"):
        assert (await b.http.get(path)).status_code == 404, path
    assert (await b.http.post(f"/jobs/{job_a}/cancel")).status_code == 404
    assert (await b.http.post(f"/jobs/{job_a}/rerun", json={})).status_code == 404
    listed_b = (await b.http.get("/executions")).json()
    assert [r["execution_id"] for r in listed_b["items"]] == [job_b]
    listed_a = (await a.http.get("/executions")).json()
    assert [r["execution_id"] for r in listed_a["items"]] == [job_a]
    assert (await a.http.get(f"/jobs/{job_a}")).status_code == 200


async def test_cancel_patches_spec_cancel_and_the_operator_cancels(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    job_id = await shim.submit(code="import time; time.sleep(60)")
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)
    await asyncio.to_thread(kubelet.run, pod)
    reply = await shim.http.post(f"/jobs/{job_id}/cancel")
    assert reply.status_code == 200 and reply.json() == {"status": "cancelled", "job_id": job_id}
    job = kube.get("pythonjobs", job_id)
    assert job is not None and job["spec"]["cancel"] is True
    record = (await shim.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})).json()
    assert record["status"] == "cancelled"
    assert (await shim.http.post(f"/jobs/{job_id}/cancel")).status_code == 404, "already finished"
    assert (await shim.http.post("/jobs/no-such-job/cancel")).status_code == 404


async def test_rerun_and_fork_create_new_objects_with_lineage(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    parent = await shim.submit(code="print('p')", input_data={"x": 1}, timeout=15)
    early = await shim.http.post(f"/jobs/{parent}/rerun", json={})
    assert early.status_code == 400, "a running parent cannot be rerun"
    pod = await asyncio.to_thread(pod_of, kube, kubelet, parent)
    await asyncio.to_thread(kubelet.succeed, pod, "p\n")
    await asyncio.to_thread(wait_phase, kube, parent, "Succeeded")

    rerun = await shim.http.post(f"/jobs/{parent}/rerun", json={"timeout": 25})
    fork = await shim.http.post(f"/jobs/{parent}/fork", json={"code": "print('f')"})
    assert rerun.status_code == fork.status_code == 200, (rerun.text, fork.text)
    rerun_job = kube.get("pythonjobs", rerun.json()["job_id"])
    fork_job = kube.get("pythonjobs", fork.json()["job_id"])
    assert rerun_job is not None and fork_job is not None
    assert rerun_job["spec"]["parentJob"] == parent and rerun_job["spec"]["relationship"] == "rerun"
    assert rerun_job["spec"]["code"] == "print('p')" and rerun_job["spec"]["timeoutSeconds"] == 25
    assert fork_job["spec"]["parentJob"] == parent and fork_job["spec"]["relationship"] == "fork"
    assert fork_job["spec"]["code"] == "print('f')" and fork_job["spec"]["inputData"] == {"x": 1}
    assert fork_job["spec"]["timeoutSeconds"] == 15, "the parent's timeout is kept"
    full = (
        await shim.http.get(f"/executions/{fork_job['metadata']['name']}", params={"view": "full"})
    ).json()
    assert full["parent_execution_id"] == parent and full["relationship"] == "fork"


async def test_history_filters_sorts_newest_first_and_pages(kube: KubeHarness, start_shim: Any) -> None:
    kube.create("pythonjobtypes", job_type_object("science"))
    shim = await start_shim()
    ids = []
    for n in range(5):
        ids.append(await shim.submit(code=f"print({n})", job_type="science" if n % 2 else None))
        await asyncio.sleep(0.01)  # distinct creation timestamps (the harness has microseconds)
    page = (await shim.http.get("/executions", params={"limit": 2})).json()
    assert [r["execution_id"] for r in page["items"]] == [ids[4], ids[3]]
    assert page["has_more"] is True and page["count"] == 2
    rest = (await shim.http.get("/executions", params={"limit": 2, "offset": 4})).json()
    assert [r["execution_id"] for r in rest["items"]] == [ids[0]] and rest["has_more"] is False
    science = (await shim.http.get("/executions", params={"job_type": "science"})).json()
    assert [r["execution_id"] for r in science["items"]] == [ids[3], ids[1]]
    queued = (await shim.http.get("/executions", params={"status": "queued"})).json()
    assert len(queued["items"]) == 5
    assert (await shim.http.get("/executions", params={"status": "succeeded"})).json()["items"] == []
    stats = (await shim.http.get("/pool/stats")).json()
    assert stats["pending"] == 5 and stats["running"] == 0


async def test_bad_input_and_unknown_ids_get_clear_errors(kube: KubeHarness, start_shim: Any) -> None:
    shim = await start_shim()
    bad_type = await shim.http.post("/execute/async", json={"code": "print(1)", "job_type": "Data_Science"})
    assert bad_type.status_code == 422
    assert "job_type" in bad_type.json()["detail"] and "DNS label" in bad_type.json()["detail"]
    for job_id in ("NOT_A_NAME", "..", "a" * 300):
        assert (await shim.http.get(f"/jobs/{job_id}")).status_code == 404
    assert (await shim.http.get("/jobs/3f0c2b1e-0000-4000-8000-000000000000")).status_code == 404
    health = (await shim.http.get("/health")).json()
    assert health["backend"] == "kubernetes" and health["status"] == "healthy"


async def test_health_is_degraded_when_the_api_is_unreachable(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    settings = Settings(backend="kubernetes", kubernetes=KubernetesOptions(kubeconfig=str(kubeconfig)))
    backend = KubernetesBackend(settings)
    server = TestServer(create_app(settings, backend), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded" and health["backend"] == "kubernetes"
            submit = await http.post("/execute/async", json={"code": "print(1)"})
            assert submit.status_code == 503 and "Kubernetes API unavailable" in submit.json()["detail"]
    finally:
        await server.close()


async def test_job_types_are_read_from_pythonjobtype_objects(kube: KubeHarness, start_shim: Any) -> None:
    # The shim's own configuration names a type the cluster does not have: the cluster wins.
    shim = await start_shim(job_types=[{"name": "configured-only"}])
    names = [t["name"] for t in (await shim.http.get("/job-types")).json()]
    assert names == ["default"], "without PythonJobTypes only the built-in default exists"

    kube.create(
        "pythonjobtypes",
        job_type_object(
            "science", requirements=["pandas==2.2.3"], timeoutSeconds=300, resources={"memory": "2Gi"}
        ),
    )
    listed = (await shim.http.get("/job-types")).json()
    assert [t["name"] for t in listed] == ["default", "science"]
    science = (await shim.http.get("/job-types/science")).json()
    assert science["requirements"] == ["pandas==2.2.3"] and science["timeout"] == 300
    assert science["memory_limit"] == "2g" and science["network_enabled"] is False
    assert (await shim.http.get("/job-types/configured-only")).status_code == 404

    job_id = await shim.submit(code="print(1)", job_type="science@v2")
    job = kube.get("pythonjobs", job_id)
    assert job is not None and job["metadata"]["labels"]["takovm.dev/job-type"] == "science"

    unknown = await shim.http.post("/execute/async", json={"code": "print(1)", "job_type": "configured-only"})
    assert unknown.status_code == 422, unknown.text
    assert (
        unknown.json()["detail"]
        == "job_type: unknown job type 'configured-only' (available: default, science)"
    )
    assert len(kube.list("pythonjobs")) == 1, "a refused submission creates nothing"


async def test_job_types_are_per_tenant_namespace(kube: KubeHarness, start_shim: Any) -> None:
    kube.create("pythonjobtypes", job_type_object("science"))
    shim = await start_shim(
        headers={"X-API-Key": KEY_B},
        api_auth_enabled=True,
        api_keys={KEY_B: "tenant-b"},
        tenant_namespaces={"tenant-b": OTHER_NAMESPACE},
    )
    assert [t["name"] for t in (await shim.http.get("/job-types")).json()] == ["default"]
    refused = await shim.http.post("/execute/async", json={"code": "print(1)", "job_type": "science"})
    assert refused.status_code == 422 and "unknown job type 'science'" in refused.json()["detail"]


async def test_rerun_of_configmap_code_keeps_the_code_ref_without_reading_it(
    kube: KubeHarness, start_shim: Any
) -> None:
    shim = await start_shim()
    kube.create(
        "pythonjobs",
        {
            "apiVersion": "takovm.dev/v1alpha1",
            "kind": "PythonJob",
            "metadata": {"name": "from-kubectl"},
            "spec": {"codeRef": {"name": "my-code", "key": "job.py"}, "inputData": {"x": 1}},
        },
    )
    kube.patch_status("pythonjobs", "from-kubectl", {"phase": "Succeeded", "exitCode": 0})

    rerun = await shim.http.post("/jobs/from-kubectl/rerun", json={"timeout": 12})
    fork = await shim.http.post("/jobs/from-kubectl/fork", json={"code": "print('new')"})
    assert rerun.status_code == fork.status_code == 200, (rerun.text, fork.text)
    child = kube.get("pythonjobs", rerun.json()["job_id"])
    assert child is not None and "code" not in child["spec"]
    assert child["spec"]["codeRef"] == {"name": "my-code", "key": "job.py"}
    assert child["spec"]["inputData"] == {"x": 1} and child["spec"]["timeoutSeconds"] == 12
    assert child["spec"]["parentJob"] == "from-kubectl" and child["spec"]["relationship"] == "rerun"
    forked = kube.get("pythonjobs", fork.json()["job_id"])
    assert forked is not None and forked["spec"]["code"] == "print('new')" and "codeRef" not in forked["spec"]
    paths = [str(r.url) for r in shim_requests(kube)]
    assert not any("/configmaps" in p for p in paths), "the shim's Role has no ConfigMap access"


async def test_metrics_count_a_job_once_on_the_replica_that_submitted_it(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, start_shim: Any
) -> None:
    """GET /metrics on the kubernetes backend: the submitting replica counts the submit and, from its
    watch, the finish; another replica (which watches the same job) counts neither, so a sum over
    replicas is right. No job id or namespace appears in the scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    def counted(text: str, name: str, **labels: str) -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels == labels
        )

    run_operator()
    first, second = await start_shim(), await start_shim()
    job_id = await first.submit(code="print('m')")
    waiting = asyncio.create_task(
        second.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})
    )
    pod = await asyncio.to_thread(pod_of, kube, kubelet, job_id)
    await asyncio.to_thread(kubelet.succeed, pod, "m\n")
    assert (await waiting).json()["status"] == "succeeded"
    finished = {"status": "succeeded", "job_type": "default"}
    deadline = time.monotonic() + 15
    while True:
        scraped = await first.http.get("/metrics")
        if (
            counted(scraped.text, "takovm_shim_jobs_finished_total", **finished)
            or time.monotonic() > deadline
        ):
            break
        await asyncio.sleep(0.1)
    assert scraped.status_code == 200
    assert counted(scraped.text, "takovm_shim_jobs_submitted_total", job_type="default") == 1
    assert counted(scraped.text, "takovm_shim_jobs_finished_total", **finished) == 1
    other = (await second.http.get("/metrics")).text
    assert counted(other, "takovm_shim_jobs_submitted_total", job_type="default") == 0
    assert counted(other, "takovm_shim_jobs_finished_total", **finished) == 0
    waited = {"route": "/jobs/{job_id}/result", "method": "GET", "status": "200"}
    assert counted(other, "takovm_shim_http_requests_total", **waited) == 1
    assert "\ntakovm_shim_queue_depth " not in scraped.text  # no sample: the operator knows the queue
    assert job_id not in scraped.text and kube.namespace not in scraped.text
