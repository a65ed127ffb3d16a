"""A standby pool whose refill failed is refilled by the periodic resync, without any further event
(issue #17). The real operator (kopf) against kmock, behind a proxy that refuses the pool's first Pod
creates without forwarding them (nothing is created, so no Pod event will ever come for them)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import OperatorThread, operator_options
from reliability_support import FaultProxy, api_status, proxied_kubeconfig

from tako_operator.core import standby as sb
from tako_operator.settings import StandbySettings

pytestmark = pytest.mark.slow
INTERNAL = api_status(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
POOL = 2


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def standby_pods(kube: KubeHarness) -> list[str]:
    return [p["metadata"]["name"] for p in kube.list("pods") if sb.is_standby(p)]


def test_a_failed_refill_is_retried_by_the_resync(kube: KubeHarness, tmp_path: Path) -> None:
    with FaultProxy(kube.url) as proxy:
        refused = proxy.fail("POST", r"/api/v1/namespaces/[^/]+/pods$", [(500, INTERNAL)] * POOL)
        options = operator_options(kube, tmp_path, watch_server_timeout=300)
        options.kubeconfig = proxied_kubeconfig(kube, proxy, tmp_path)
        options.config.standby = StandbySettings(resync_seconds=1.0)
        operator = OperatorThread(options).start()
        try:
            kube.create(
                "pythonjobtypes",
                {
                    "apiVersion": "takovm.dev/v1alpha1",
                    "kind": "PythonJobType",
                    "metadata": {"name": "pooled"},
                    "spec": {"image": "python:3.11-slim", "standbyPods": POOL},
                },
            )
            wait_for(lambda: len(refused) >= 1, timeout=30, what="the refused refill")
            # the job type's event came and went; only the resync can create the pool's Pods now
            wait_for(lambda: len(standby_pods(kube)) == POOL, timeout=30, what=f"{POOL} standby Pods")
        finally:
            operator.stop()
    assert len(refused) == POOL  # every injected fault was served
    assert len(standby_pods(kube)) == POOL  # and the pool was not overfilled
