"""API-server faults on the operator's PythonJob watch, injected with kmock (the real operator, kopf).

kmock serves real HTTP; a reaction with override priority answers the first watch requests on
``pythonjobs`` with the fault, then steps aside (``reliability_support.inject``; the emulator serves
as usual afterwards). An abrupt drop of the watch connection is a real TCP cut by a proxy in front of
kmock (``test_fault_operator_drop.py``). The promise: the operator keeps watching, and a job created
after the faults is reconciled exactly once (one Pod, one ConfigMap, one NetworkPolicy).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, OperatorThread, operator_options, wait_phase
from reliability_support import api_status, inject

pytestmark = pytest.mark.slow

GONE = api_status(410, "Expired", "too old resource version: 1 (2)")
INTERNAL = api_status(500, "InternalError", "Internal error occurred: etcdserver: leader changed")
CONFLICT = api_status(409, "Conflict", "the server reported a conflict")


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


@pytest.fixture
def operator(kube: KubeHarness, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """Start the real operator (kopf + handlers) against `kube`; stopped at teardown, before the
    emulator goes away (else its watches would retry against a closed port for a while)."""
    threads: list[OperatorThread] = []

    def start() -> None:
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
    """One Pod create request (kmock counts requests, so a refused duplicate counts too) up to the job's
    end. Succeeded is written by the operator after it saw the Pod finish, and the plan for a finished
    job creates nothing, so a duplicate reconcile (say, from the listing after a restart) can only have
    created a Pod before that point: no sleep needed to give it time to show."""
    kubelet = FakeKubelet(kube)
    pod = kubelet.wait_pod(name, timeout=timeout)
    assert kube.creations("pods") == 1
    kubelet.succeed(pod["metadata"]["name"])
    wait_phase(kube, name, "Succeeded", timeout=timeout)
    assert kube.creations("pods") == 1, kube.pod_order
    assert kube.pod_order == [pod["metadata"]["name"]]
    assert kube.creations("configmaps") >= 1 and kube.creations("networkpolicies") >= 1


WATCH_JOBS = (kmock.action.WATCH, kmock.resource("takovm.dev/v1alpha1/pythonjobs"))


def survive(kube: KubeHarness, start: Callable[[], None], faults: list[tuple[int, Any]], job: str) -> None:
    """Answer the first PythonJob watch requests with `faults`, start the operator, and check that a
    job created once every fault was served is reconciled exactly once."""
    served = inject(kube, WATCH_JOBS, faults)
    start()
    wait_for(lambda: len(served) == len(faults), timeout=60, what=f"the {len(faults)} injected fault(s)")
    create_job(kube, job)
    assert_reconciled_once(kube, job, timeout=30)


def test_410_gone_inside_the_watch_stream_then_a_job_is_reconciled_once(
    kube: KubeHarness, operator: Callable[[], None]
) -> None:
    """The usual way an API server expires a watch: HTTP 200 with an ERROR event carrying 410."""
    survive(kube, operator, [(200, {"type": "ERROR", "object": GONE})] * 2, "after-gone-event")


def test_http_410_gone_on_the_watch_request_then_a_job_is_reconciled_once(
    kube: KubeHarness, operator: Callable[[], None]
) -> None:
    """kopf does not retry an HTTP-level 410 on a watch request: it ends its reactor. `operate`
    restarts kopf in-process, which lists again and watches from there. A job created while the
    reactor was down is found by that listing and reconciled exactly once."""
    survive(kube, operator, [(410, GONE)], "after-http-410")


def test_500_on_the_watch_request_three_times_then_a_job_is_reconciled_once(
    kube: KubeHarness, operator: Callable[[], None]
) -> None:
    """kopf retries a 5xx on a request with its own backoff (1, 1, 2, ... s) before escalating."""
    survive(kube, operator, [(500, INTERNAL)] * 3, "after-watch-500")


def test_409_conflict_on_the_watch_request_then_a_job_is_reconciled_once(
    kube: KubeHarness, operator: Callable[[], None]
) -> None:
    """Any other 4xx on a watch request also ends kopf's reactor at once; the supervisor restarts it."""
    survive(kube, operator, [(409, CONFLICT)], "after-watch-409")
