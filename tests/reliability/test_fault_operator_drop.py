"""The operator's watch connections cut abruptly mid-stream (the real operator, kopf, against kmock).

kmock cannot drop a connection, so a real HTTP proxy sits between the operator and kmock
(``reliability_support.FaultProxy``). Once the watch streams have carried events, it aborts their TCP
connections: the client sees the chunked stream end without its final chunk, as when a load balancer
or an API server dies mid-stream. The watch timeout is long (300 s), so any re-watch within the test
comes from handling the drop, not from an orderly end of the stream.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, OperatorThread, operator_options, sample_job, wait_phase
from reliability_support import FaultProxy, proxied_kubeconfig

pytestmark = pytest.mark.slow

WATCH_SECONDS = 300


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def test_watch_connections_cut_mid_stream_then_a_job_is_reconciled_once(
    kube: KubeHarness, tmp_path: Path
) -> None:
    kubelet = FakeKubelet(kube)
    with FaultProxy(kube.url) as proxy:
        options = operator_options(kube, tmp_path, watch_server_timeout=WATCH_SECONDS)
        options.kubeconfig = proxied_kubeconfig(kube, proxy, tmp_path)
        operator = OperatorThread(options).start()
        try:
            kube.create("pythonjobs", sample_job("before-drop"))
            kubelet.wait_pod("before-drop", timeout=30)  # the job and Pod watches are carrying events
            watched_before = len(proxy.watch_requests)
            assert proxy.cut_watches("") >= 3, "the PythonJob, Pod and PythonJobType watches were cut"
            assert any("/pythonjobs?" in path and sent > 0 for path, sent in proxy.cut), proxy.cut
            wait_for(
                lambda: len(proxy.watch_requests) >= watched_before + 3,
                timeout=20,
                what="the operator to watch again after the drop",
            )

            kube.create("pythonjobs", sample_job("after-drop", code="print('after')"))
            pod = kubelet.wait_pod("after-drop", timeout=20)
            kubelet.succeed(pod["metadata"]["name"], stdout="after\n")  # needs the Pod watch back too
            job = wait_phase(kube, "after-drop", "Succeeded", timeout=20)
            time.sleep(2)  # a duplicate Pod would show by now
        finally:
            operator.stop()

    assert kube.pod_order == ["before-drop-pod", "after-drop-pod"], kube.pod_order
    assert job["status"]["stdout"] == "after\n" and job["status"]["attempts"] == 1, job["status"]
