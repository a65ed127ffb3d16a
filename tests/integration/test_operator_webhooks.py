"""Completion webhooks on the kubernetes backend: the real operator (kopf) against kmock sends each
finished PythonJob's record to a real receiver on loopback (allowlisted), signed per Standard Webhooks
with the namespace's secret from a Kubernetes Secret; retries after 500s; resumes after a restart with
the same webhook-id; refuses private and metadata addresses (fail closed). FakeKubelet plays the kubelet.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, sample_job, wait_phase
from webhook_support import SECRET, Receiver

from tako_operator.settings import WebhookSettings
from tako_vm import webhooks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
SECRET_NAME = "tako-webhooks"


def hook_settings(kube: KubeHarness, **extra: Any) -> WebhookSettings:
    return WebhookSettings(
        secret_name=SECRET_NAME,
        secret_namespace=kube.namespace,
        allowlist=("127.0.0.1/32",),
        first_retry_seconds=0.3,
        max_retry_seconds=0.6,
        secret_cache_seconds=0.1,
        **extra,
    )


def add_secret(kube: KubeHarness) -> None:
    value = base64.b64encode(SECRET.encode()).decode()
    kube.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME},
            "data": {kube.namespace: value},
        },
    )


def run_job(kube: KubeHarness, kubelet: FakeKubelet, name: str, url: str, stdout: str = "hi\n") -> None:
    kube.create("pythonjobs", sample_job(name, webhook={"url": url}))
    pod = kubelet.wait_pod(name)["metadata"]["name"]
    kubelet.succeed(pod, stdout=stdout)
    wait_phase(kube, name, "Succeeded", timeout=30)


def settled(kube: KubeHarness, name: str, timeout: float = 30.0) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        hook = ((kube.get("pythonjobs", name) or {}).get("status") or {}).get("webhook") or {}
        return hook if hook.get("state") in ("delivered", "failed") else None

    found: dict[str, Any] = wait_for(find, timeout=timeout, what=f"webhook of {name} settled")
    return found


def test_one_verified_delivery_per_job_after_two_500s(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, unused_tcp_port: int
) -> None:
    add_secret(kube)
    answers: dict[str, int] = {}

    def handle(payload: dict[str, Any], headers: Any) -> int:
        job = payload["data"]["execution_id"]
        answers[job] = answers.get(job, 0) + 1
        return 500 if job == "flaky" and answers[job] <= 2 else 200

    receiver = Receiver(handle).start()
    try:
        run_operator(webhooks=hook_settings(kube), metrics_port=unused_tcp_port)
        run_job(kube, kubelet, "flaky", receiver.url, stdout="first\n")
        run_job(kube, kubelet, "steady", receiver.url, stdout="second\n")
        flaky, steady = settled(kube, "flaky"), settled(kube, "steady")
    finally:
        receiver.stop()

    assert flaky["state"] == "delivered" and flaky["attempts"] == 3 and flaky["lastStatusCode"] == 200
    assert steady["state"] == "delivered" and steady["attempts"] == 1
    # the operator's metrics count each attempt by outcome (docs/metrics.md)
    scrape = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=10).text
    assert 'takovm_webhook_deliveries_total{outcome="retrying"} 2.0' in scrape
    assert 'takovm_webhook_deliveries_total{outcome="delivered"} 2.0' in scrape
    assert receiver.url not in scrape and "flaky" not in scrape
    by_id: dict[str, list[tuple[dict[str, str], bytes]]] = {}
    for headers, body in receiver.attempts():
        by_id.setdefault(headers["webhook-id"], []).append((headers, body))
    assert sorted(by_id) == sorted([flaky["webhookId"], steady["webhookId"]])
    assert len(by_id[flaky["webhookId"]]) == 3 and len(by_id[steady["webhookId"]]) == 1
    for attempts in by_id.values():
        for headers, body in attempts:
            event = webhooks.verify(body, headers, SECRET)
            assert event["type"] == "job.completed"
    last_headers, last_body = by_id[flaky["webhookId"]][-1]
    record = webhooks.verify(last_body, last_headers, SECRET)["data"]
    assert record["execution_id"] == "flaky" and record["status"] == "succeeded"
    assert record["stdout"] == "first\n" and record["exit_code"] == 0
    # a tampered body does not verify
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(last_body.replace(b"first", b"forged"), last_headers, SECRET)


def test_delivery_resumes_after_an_operator_restart_with_the_same_webhook_id(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    add_secret(kube)
    accept = {"now": False}
    receiver = Receiver(lambda payload, headers: 200 if accept["now"] else 500).start()
    try:
        first = run_operator(webhooks=hook_settings(kube))
        run_job(kube, kubelet, "restarted", receiver.url)

        def retrying() -> dict[str, Any] | None:
            hook = ((kube.get("pythonjobs", "restarted") or {}).get("status") or {}).get("webhook") or {}
            return hook if hook.get("state") == "pending" and hook.get("attempts", 0) >= 2 else None

        before = wait_for(retrying, timeout=30, what="the delivery being retried")
        first.stop()  # killed mid-retry: the state is in status.webhook, nothing in memory matters
        seen_before = len(receiver.attempts())
        accept["now"] = True
        time.sleep(1.0)
        assert len(receiver.attempts()) == seen_before, "a stopped operator sent nothing"
        run_operator(webhooks=hook_settings(kube))
        after = settled(kube, "restarted")
    finally:
        receiver.stop()

    assert after["state"] == "delivered" and after["attempts"] > before["attempts"]
    ids = {headers["webhook-id"] for headers, _ in receiver.attempts()}
    assert ids == {before["webhookId"]} == {after["webhookId"]}
    headers, body = receiver.attempts()[-1]
    assert webhooks.verify(body, headers, SECRET)["data"]["execution_id"] == "restarted"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://169.254.169.254/latest/meta-data", "a cloud metadata address"),
        ("http://10.1.2.3/hook", "a private address"),
        ("http://127.0.0.1:9/hook", "a loopback address"),  # not allowlisted in this test
    ],
)
def test_refused_addresses_fail_closed_without_a_request(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, url: str, problem: str
) -> None:
    add_secret(kube)
    run_operator(webhooks=WebhookSettings(secret_name=SECRET_NAME, secret_namespace=kube.namespace))
    run_job(kube, kubelet, "refused", url)
    hook = settled(kube, "refused")
    assert hook["state"] == "failed" and hook["attempts"] == 1
    assert problem in hook["lastError"] and hook.get("lastStatusCode") is None


def test_without_a_configured_secret_the_delivery_fails_saying_so(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    receiver = Receiver().start()
    try:
        run_operator(webhooks=WebhookSettings(allowlist=("127.0.0.1/32",)))
        run_job(kube, kubelet, "unsigned", receiver.url)
        hook = settled(kube, "unsigned")
    finally:
        receiver.stop()
    assert hook["state"] == "failed" and "TAKO_OPERATOR_WEBHOOK_SECRET_NAME" in hook["lastError"]
    assert receiver.attempts() == []


# -- through the shim's kubernetes backend (the real aiohttp app over HTTP) ------------------------------


async def test_shim_submit_carries_the_url_and_get_job_shows_the_delivery(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, tmp_path: Any
) -> None:
    from test_shim_kubernetes import Shim, shim_settings  # the same shim fixture parts

    from tako_shim.backends.kubernetes.backend import KubernetesBackend
    from tako_shim.http.app import create_app

    add_secret(kube)
    settings = shim_settings(kube, tmp_path, webhook_allowlist=["127.0.0.1/32"])
    backend = KubernetesBackend(settings)
    server = TestServer(create_app(settings, backend), host="127.0.0.1")
    await server.start_server()
    shim = Shim(server, backend, {})
    receiver = Receiver().start()
    try:
        run_operator(webhooks=hook_settings(kube))
        job_id = await shim.submit(code="print('hi')", webhook_url=receiver.url)
        assert kube.get("pythonjobs", job_id)["spec"]["webhook"] == {"url": receiver.url}
        waiting = (await shim.http.get(f"/jobs/{job_id}")).json()["webhook"]
        assert waiting["state"] == "waiting" and waiting["attempts"] == 0 and waiting["url"] == receiver.url

        for url, problem in [
            ("http://169.254.169.254/latest/meta-data", "a cloud metadata address"),
            ("http://192.168.1.10/hook", "a private address"),
            ("http://[::ffff:10.0.0.1]/hook", "a private address"),
        ]:
            refused = await shim.http.post("/execute/async", json={"code": "print(1)", "webhook_url": url})
            assert refused.status_code == 422, refused.text
            assert problem in json.dumps(refused.json()["detail"])

        pod = await asyncio.to_thread(lambda: kubelet.wait_pod(job_id)["metadata"]["name"])
        await asyncio.to_thread(kubelet.succeed, pod, "hi\n")
        await asyncio.to_thread(settled, kube, job_id)
        shown = (await shim.http.get(f"/jobs/{job_id}")).json()["webhook"]
    finally:
        receiver.stop()
        await shim.http.aclose()
        await server.close()
    assert shown["state"] == "delivered" and shown["attempts"] == 1 and shown["last_status_code"] == 200
    assert shown["next_attempt_at"] is None and shown["delivered_at"]
    ((headers, body),) = receiver.attempts()
    assert headers["webhook-id"] == shown["webhook_id"]
    record = webhooks.verify(body, headers, SECRET)["data"]
    assert record["execution_id"] == job_id and record["stdout"] == "hi\n"


def test_full_path_with_gvisor_via_the_node_agent(
    kube: KubeHarness, run_operator: Any, tmp_path: Any
) -> None:
    """kubectl-style PythonJob -> operator -> Pod -> node agent -> runsc -> status -> signed webhook."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nodeagent.agent import NodeAgent, runsc_problem

    problem = runsc_problem()
    if problem is not None:
        pytest.skip(f"needs runsc: {problem}")
    add_secret(kube)
    receiver = Receiver().start()
    try:
        with NodeAgent(kube, tmp_path / "node"):
            run_operator(webhooks=hook_settings(kube))
            kube.create(
                "pythonjobs",
                sample_job(
                    "gvisor-hook",
                    code="import os\nprint(os.uname().release)\n",
                    webhook={"url": receiver.url},
                ),
            )
            wait_phase(kube, "gvisor-hook", "Succeeded", timeout=150)
            hook = settled(kube, "gvisor-hook", timeout=60)
    finally:
        receiver.stop()
    assert hook["state"] == "delivered" and hook["attempts"] == 1
    ((headers, body),) = receiver.attempts()
    record = webhooks.verify(body, headers, SECRET)["data"]
    assert record["stdout"] == "4.4.0\n", "the gVisor kernel ran the code"
    assert record["runtime"] == "gvisor" and record["status"] == "succeeded"
