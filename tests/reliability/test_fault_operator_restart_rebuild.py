"""After a supervised restart of kopf, the operator's job list is rebuilt from the API, not carried
over from the previous run (issue #17). The real operator against kmock: an HTTP 410 on a PythonJob
watch request ends kopf's reactor and `operate` restarts it after a backoff; a job deleted while it
was down (no DELETED event ever reaches the operator) must not survive in the operator's memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import OperatorThread, operator_options, phase_of, sample_job
from reliability_support import FaultProxy, api_status, proxied_kubeconfig

from tako_operator import main as operator_main
from tako_operator.reconciler import Reconciler
from tako_operator.settings import RestartPolicy

pytestmark = pytest.mark.slow
GONE = api_status(410, "Expired", "too old resource version: 1 (2)")
KEY = ("tako-test", "first")


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def test_a_restarted_run_lists_the_jobs_again(
    kube: KubeHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcilers: list[Reconciler] = []

    class Recorded(Reconciler):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            reconcilers.append(self)

    monkeypatch.setattr(operator_main, "Reconciler", Recorded)
    with FaultProxy(kube.url) as proxy:
        options = operator_options(kube, tmp_path, max_concurrent=1, watch_server_timeout=300)
        options.kubeconfig = proxied_kubeconfig(kube, proxy, tmp_path)
        options.config.restart = RestartPolicy(backoff_seconds=8.0, backoff_max_seconds=8.0)
        operator = OperatorThread(options).start()
        try:
            run_and_restart(kube, proxy, reconcilers)
        finally:
            operator.stop()


def run_and_restart(kube: KubeHarness, proxy: FaultProxy, reconcilers: list[Reconciler]) -> None:
    kube.create("pythonjobs", sample_job("first"))
    wait_for(lambda: phase_of(kube, "first") == "Pending", timeout=60, what="first admitted")
    kube.create("pythonjobs", sample_job("queued"))
    wait_for(lambda: phase_of(kube, "queued") == "Queued", timeout=60, what="queued behind first")
    (reconciler,) = reconcilers
    assert KEY in {e.key for e in reconciler.entries}
    served = proxy.fail("GET", r"/pythonjobs$", [(410, GONE)])  # the next list or watch of jobs
    assert proxy.cut_watches("pythonjobs") >= 1  # kopf watches again at once and gets the 410
    wait_for(lambda: served, timeout=60, what="the 410 on a re-watch (kopf's reactor ends)")
    kube.delete("pythonjobs", "first")  # while kopf waits out its restart backoff: no event
    wait_for(lambda: reconciler.runs == 2 and reconciler.indexes_bound.is_set(), timeout=60,
             what="the restarted run's indexes")  # fmt: skip
    # the new run's list, not the old one's: the deleted job is gone, its slot is free
    assert KEY not in {e.key for e in reconciler.entries}
    assert reconciler.jobs.get(KEY) is None
    wait_for(lambda: phase_of(kube, "queued") == "Pending", timeout=60, what="queued admitted")
