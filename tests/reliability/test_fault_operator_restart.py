"""A supervised in-process restart of kopf keeps admission and liveness consistent (real kopf, kmock).

An HTTP-level 410 on the PythonJob watch ends kopf's reactor; `operate` restarts it in the same
process (see test_fault_operator_watch.py). Here the restart happens while one job holds the only
slot: the restarted operator must keep the next job queued until that slot is free, must not create a
second Pod for the running job, and must serve its liveness endpoint again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import kmock
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, OperatorThread, operator_options, phase_of, sample_job, wait_phase
from reliability_support import api_status, inject

pytestmark = pytest.mark.slow

WATCH_JOBS = (kmock.action.WATCH, kmock.resource("takovm.dev/v1alpha1/pythonjobs"))
GONE = api_status(410, "Expired", "too old resource version: 1 (2)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def kube() -> Iterator[KubeHarness]:
    with KubeHarness() as harness:
        yield harness


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_restart_while_the_only_slot_is_taken_keeps_the_queue_and_serves_liveness_again(
    kube: KubeHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tako_operator")
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    kubelet = FakeKubelet(kube)
    operator = OperatorThread(operator_options(kube, tmp_path, max_concurrent=1, liveness=liveness)).start()
    try:
        wait_for(lambda: healthy(liveness), timeout=15, what="the liveness endpoint")
        kube.create("pythonjobs", sample_job("holds-the-slot"))
        first = kubelet.wait_pod("holds-the-slot")["metadata"]["name"]
        kubelet.run(first)

        served = inject(kube, WATCH_JOBS, [(410, GONE)])  # the next re-watch (within 5 s) gets it
        wait_for(lambda: served, timeout=30, what="the injected 410")
        kube.create("pythonjobs", sample_job("waits-for-the-slot"))
        wait_for(
            lambda: any("restarting it in" in r.getMessage() for r in caplog.records),
            timeout=30,
            what="the supervisor to restart kopf",
        )
        wait_phase(kube, "waits-for-the-slot", "Queued", timeout=30)
        wait_for(lambda: healthy(liveness), timeout=30, what="the liveness endpoint after the restart")
        assert phase_of(kube, "holds-the-slot") == "Running"
        assert kube.pod_order == [first], "no second Pod while the only slot is taken"

        kubelet.succeed(first, stdout="first\n")
        wait_phase(kube, "holds-the-slot", "Succeeded", timeout=30)
        second = kubelet.wait_pod("waits-for-the-slot")["metadata"]["name"]
        kubelet.succeed(second, stdout="second\n")
        job = wait_phase(kube, "waits-for-the-slot", "Succeeded", timeout=30)
    finally:
        operator.stop()

    assert kube.pod_order == [first, second] and kube.pods_peak == 1, (kube.pod_order, kube.pods_peak)
    assert job["status"]["stdout"] == "second\n" and job["status"]["attempts"] == 1, job["status"]


def test_a_peered_operator_restarted_in_process_resumes_and_reconciles_once(
    kube: KubeHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With peering (as the chart deploys it), the restarted run finds its own record in the
    KopfPeering object, is not paused by it, and reconciles a job created during the restart once."""
    caplog.set_level(logging.INFO)
    kube.create(
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "tako"}, "status": {}},
    )
    kubelet = FakeKubelet(kube)
    options = operator_options(kube, tmp_path, peering="tako", standalone=False)
    operator = OperatorThread(options).start()
    try:
        kube.create("pythonjobs", sample_job("before-restart"))
        kubelet.succeed(kubelet.wait_pod("before-restart", timeout=30)["metadata"]["name"])
        wait_phase(kube, "before-restart", "Succeeded", timeout=30)

        served = inject(kube, WATCH_JOBS, [(410, GONE)])
        wait_for(lambda: served, timeout=30, what="the injected 410")
        kube.create("pythonjobs", sample_job("during-restart"))
        # kopf's shutdown after the failure can take up to the 15 s bound before the restart
        kubelet.succeed(kubelet.wait_pod("during-restart", timeout=90)["metadata"]["name"])
        wait_phase(kube, "during-restart", "Succeeded", timeout=30)
    finally:
        operator.stop()

    assert any("restarting it in" in r.getMessage() for r in caplog.records), "kopf was restarted"
    assert kube.pod_order == ["before-restart-pod", "during-restart-pod"], kube.pod_order
    peers = (kube.get("kopfpeerings", "tako") or {}).get("status") or {}
    assert len(peers) <= 1, f"one operator, one peering record at most: {peers}"


def operator_process(
    kube: KubeHarness, tmp_path: Path, log: Path, **env_overrides: str
) -> subprocess.Popen[bytes]:
    """`python -m tako_operator` in its own process: the main thread, so kopf and the supervisor
    handle SIGTERM themselves (the production path)."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig(tmp_path)), **env_overrides}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tako_operator", "--namespace", kube.namespace],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigterm_after_a_restart_stops_the_operator_process(kube: KubeHarness, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    inject(kube, WATCH_JOBS, [(410, GONE)])
    proc = operator_process(kube, tmp_path, log)
    try:
        wait_for(lambda: "restarting it in" in log.read_text(), timeout=60, what="a supervised restart")
        kube.create("pythonjobs", sample_job("after-restart"))
        FakeKubelet(kube).wait_pod("after-restart", timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kube.pod_order == ["after-restart-pod"]


def test_sigterm_during_the_restart_backoff_stops_the_process_at_once(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """Between two kopf runs nobody else listens for signals: the supervisor's own handler must end
    the wait instead of restarting kopf when the backoff (60 s here) is over."""
    log = tmp_path / "operator.log"
    inject(kube, WATCH_JOBS, [(410, GONE)])
    proc = operator_process(kube, tmp_path, log, TAKO_OPERATOR_RESTART_BACKOFF_SECONDS="60")
    try:
        wait_for(
            lambda: "restarting it in 60.0 s" in log.read_text(), timeout=120, what=f"the restart: {log}"
        )
        kopf_runs = log.read_text().count("Initial authentication has been initiated")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
        assert time.monotonic() - started < 30, "the process waited out the backoff"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log.read_text().count("Initial authentication has been initiated") == kopf_runs, "kopf ran again"
