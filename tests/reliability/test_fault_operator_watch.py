"""API-server faults on the operator's PythonJob watch, injected with kmock (the real operator, kopf).

kmock serves real HTTP; a reaction with override priority answers the first watch requests on
``pythonjobs`` with the fault, then steps aside (``reliability_support.inject``; the emulator serves
as usual afterwards). An abrupt drop of the watch connection is a real TCP cut by a proxy in front of
kmock (``test_fault_operator_drop.py``). The promise: the operator keeps watching, and a job created
after the faults is reconciled exactly once (one Pod, one ConfigMap, one NetworkPolicy).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import OperatorThread, operator_options
from reliability_support import api_status, inject

pytestmark = pytest.mark.slow

GONE = api_status(410, "Expired", "too old resource version: 1 (2)")


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[Callable[[KubeHarness], None]]:
    """Start the real operator (kopf + handlers) against a harness; stopped at teardown."""
    threads: list[OperatorThread] = []

    def start(kube: KubeHarness) -> None:
        threads.append(OperatorThread(operator_options(kube, tmp_path)).start())

    yield start
    for thread in threads:
        thread.stop()


def create_job(kube: KubeHarness, name: str) -> None:
    kube.create(
        "pythonjobs",
        {
            "apiVersion": "takovm.dev/v1alpha1",
            "kind": "PythonJob",
            "metadata": {"name": name},
            "spec": {"code": "print('hello')"},
        },
    )


def assert_reconciled_once(kube: KubeHarness, name: str, timeout: float = 60) -> None:
    wait_for(lambda: kube.creations("pods") == 1, timeout=timeout, what=f"a Pod for {name}")
    time.sleep(2)  # any duplicate reconciliation would show by now
    assert kube.creations("pods") == 1
    assert kube.creations("configmaps") >= 1 and kube.creations("networkpolicies") >= 1
    job = kube.get("pythonjobs", name) or {}
    assert (job.get("status") or {}).get("podName"), job


WATCH_JOBS = (kmock.action.WATCH, kmock.resource("takovm.dev/v1alpha1/pythonjobs"))


def test_410_gone_inside_the_watch_stream_then_a_job_is_reconciled_once(
    operator: Callable[[KubeHarness], None],
) -> None:
    """The usual way an API server expires a watch: HTTP 200 with an ERROR event carrying 410."""
    with KubeHarness() as kube:
        served = inject(kube, WATCH_JOBS, [(200, {"type": "ERROR", "object": GONE})] * 2)
        operator(kube)
        wait_for(lambda: len(served) == 2, timeout=60, what="the operator to re-watch after 410 events")
        create_job(kube, "after-gone-event")
        assert_reconciled_once(kube, "after-gone-event")


def test_http_410_gone_on_the_watch_request_then_a_job_is_reconciled_once(
    operator: Callable[[KubeHarness], None],
) -> None:
    """kopf does not retry an HTTP-level 410 on a watch request: it ends its reactor. `operate`
    restarts kopf in-process, which lists again and watches from there. A job created while the
    reactor was down is found by that listing and reconciled exactly once."""
    with KubeHarness() as kube:
        served = inject(kube, WATCH_JOBS, [(410, GONE)])
        operator(kube)
        wait_for(lambda: len(served) == 1, timeout=60, what="the injected 410")
        create_job(kube, "after-http-410")
        assert_reconciled_once(kube, "after-http-410", timeout=20)
