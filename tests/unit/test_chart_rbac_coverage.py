"""The chart's operator RBAC is sufficient for the real operator, not just minimal on paper.

The real operator (kopf + tako_operator, with leader election) runs against kmock (tests/integration's
KubeHarness; kmock stands in for the API server, which cannot run here, and has no RBAC of its own)
while jobs go through their lives: created, run, succeeded, failed, cancelled, expired by TTL.
Every request it makes is checked, as it is made, against the Roles the chart renders (403 otherwise),
and the test fails on any refused one.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from chart_support import Enforcer, operator_grants, render  # noqa: E402
from kube_harness import KubeHarness, wait_for  # noqa: E402

from tako_operator.main import OperatorOptions, operate  # noqa: E402
from tako_operator.settings import (  # noqa: E402
    Limits,
    PodSettings,
    Settings,
    WebhookSettings,
)
from tako_runner.outcome import frame_envelope  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LEASE = "tako-operator"


def enforcer_for(namespace: str) -> Enforcer:
    """The chart installed in `namespace`, which is also its job namespace."""
    objects = render({"jobs": {"namespaces": [namespace]}}, namespace)
    return Enforcer(operator_grants(objects, namespace))


class Operator:
    def __init__(self, options: OperatorOptions) -> None:
        self.stop_flag, self.ready_flag = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.options = options

    def _run(self) -> None:
        try:
            asyncio.run(operate(self.options, stop_flag=self.stop_flag, ready_flag=self.ready_flag))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Operator:
        self.thread.start()
        assert self.ready_flag.wait(timeout=20), f"operator did not start: {self.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=30)


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": name},
        "spec": {"code": code, **spec},
    }


def pod_of(kube: KubeHarness, name: str) -> str:
    def find() -> str | None:
        status = (kube.get("pythonjobs", name) or {}).get("status") or {}
        return status.get("podName")

    found: str = wait_for(find, timeout=20, what=f"a pod for {name}")
    return found


def finish(kube: KubeHarness, pod: str, exit_code: int, stderr: str = "") -> None:
    body = {"v": 1, "exit_code": exit_code, "stdout": "x\n", "stderr": stderr, "timing": {"total_ms": 5}}
    kube.set_log(pod, "job", frame_envelope(body))
    kube.patch_status(
        "pods",
        pod,
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {"name": "job", "state": {"terminated": {"exitCode": exit_code, "reason": "Completed"}}}
            ],
        },
    )


def phase(kube: KubeHarness, name: str) -> str | None:
    return ((kube.get("pythonjobs", name) or {}).get("status") or {}).get("phase")


def test_every_request_of_the_real_operator_is_allowed_by_the_chart_rbac(
    kube: KubeHarness, tmp_path: pathlib.Path
) -> None:
    enforcer = enforcer_for(kube.namespace)
    kube.authorize(enforcer)
    options = OperatorOptions(
        namespaces=[kube.namespace],
        leader_election=LEASE,
        leader_election_namespace=kube.namespace,
        kubeconfig=str(kube.kubeconfig(tmp_path)),
        config=Settings(
            max_concurrent=10,
            limits=Limits(
                max_attempts=2,
                retry_backoff_seconds=0.2,
                retry_backoff_max_seconds=1.0,
                default_ttl_seconds=3600,
            ),
            pods=PodSettings(),
        ),
        watch_server_timeout=5,
    )
    with Operator(options):
        kube.create("pythonjobs", job("ok", "print('x')", ttlSecondsAfterFinished=1))
        finish(kube, pod_of(kube, "ok"), 0)
        kube.create("pythonjobs", job("bad", "1/0"))
        finish(kube, pod_of(kube, "bad"), 1, "ZeroDivisionError: division by zero")
        kube.create("pythonjobs", job("stop", "import time; time.sleep(60)"))
        pod_of(kube, "stop")
        kube.patch("pythonjobs", "stop", {"spec": {"cancel": True}})
        for name, wanted in [("bad", "Failed"), ("stop", "Cancelled")]:
            wait_for(lambda n=name, w=wanted: phase(kube, n) == w, timeout=20, what=f"{name} {wanted}")
        # ttlSecondsAfterFinished 1: the operator deletes the finished job.
        wait_for(lambda: kube.get("pythonjobs", "ok") is None, timeout=20, what="ok deleted after its TTL")

    assert enforcer.denied == [], "requests the chart's RBAC forbids"
    used = {(group, resource, verb) for _, group, resource, verb in enforcer.used}
    assert ("", "pods", "create") in used and ("takovm.dev", "pythonjobs", "delete") in used
    assert ("coordination.k8s.io", "leases", "patch") in used, "leader election was exercised"


def test_the_webhook_secret_read_is_allowed_by_exactly_its_rule(
    kube: KubeHarness, tmp_path: pathlib.Path
) -> None:
    """With webhooks.secretName set, the operator reads that Secret (and nothing else) to sign a webhook."""
    objects = render(
        {"jobs": {"namespaces": [kube.namespace]}, "webhooks": {"secretName": "hooks"}}, kube.namespace
    )
    enforcer = Enforcer(operator_grants(objects, kube.namespace))
    kube.authorize(enforcer)
    kube.create("secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hooks"}, "data": {}})
    options = OperatorOptions(
        namespaces=[kube.namespace],
        kubeconfig=str(kube.kubeconfig(tmp_path)),
        config=Settings(webhooks=WebhookSettings(secret_name="hooks", secret_namespace=kube.namespace)),
        watch_server_timeout=5,
    )
    with Operator(options):
        kube.create("pythonjobs", job("hooked", "print('x')", webhook={"url": "http://169.254.169.254/x"}))
        finish(kube, pod_of(kube, "hooked"), 0)

        def hook() -> dict[str, Any] | None:
            found = ((kube.get("pythonjobs", "hooked") or {}).get("status") or {}).get("webhook") or {}
            return found if found.get("state") in ("pending", "failed") else None

        settled = wait_for(hook, timeout=20, what="the webhook attempt")
    assert enforcer.denied == [], "requests the chart's RBAC forbids"
    assert ("", "secrets", "get") in {(g, r, v) for _, g, r, v in enforcer.used}
    assert "no webhook secret for namespace" in settled["lastError"], "read, and the missing key named"
