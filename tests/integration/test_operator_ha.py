"""High availability exactly as the chart deploys it: two `tako-vm operator` processes with the
arguments and environment of the rendered Deployment (identical for both), electing one leader
through a coordination.k8s.io Lease in kmock.

kmock stands in for the API server (none can run here). The harness gives Leases the API server's
resourceVersion compare-and-swap (kube_harness.py), which the election relies on. The only values
that differ between the two processes are what differs between two Pods anyway: $POD_NAME and the
port numbers of --liveness/--metrics-port (each Pod has its own network namespace; two processes on
one host cannot bind the same port).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from kube_harness import KubeHarness, wait_for
from operator_support import BusyKubelet, sample_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
REPO = Path(__file__).resolve().parents[2]
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"


def chart_operator(namespace: str) -> tuple[list[str], dict[str, str]]:
    """The operator container's args and plain env values, rendered by Helm's own library with the
    chart's defaults (two replicas), the job namespace being kmock's."""
    values = {"jobs": {"namespaces": [namespace]}, "fullnameOverride": "tako"}
    with helm.Chart.load(REPO / "charts" / "tako-vm") as chart:
        rendered = chart.render(values, name="tako", namespace=namespace)
    docs = [
        doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if isinstance(doc, dict)
    ]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tako-operator"
    ]
    assert deployment["spec"]["replicas"] == 2, "the chart's default is two replicas"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.pop("HOME", None)
    return list(container["args"]), env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_own_ports(args: list[str]) -> list[str]:
    """The chart's args with this process's own ports (the one difference between two Pods' argv)."""
    out = []
    for arg in args:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={free_port()}"
        out.append(arg)
    return out


class Replica:
    def __init__(self, kube: KubeHarness, tmp_path: Path, pod: str, args: list[str], env: dict[str, str]):
        self.pod = pod
        self.args = with_own_ports(args)
        self.log = tmp_path / f"{pod}.log"
        environment = {
            **os.environ,
            **env,
            "KUBECONFIG": str(kube.kubeconfig(tmp_path)),
            "POD_NAME": pod,
            "POD_NAMESPACE": kube.namespace,
        }
        environment.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "tako-vm"), *self.args],
            env=environment,
            cwd=REPO,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    @property
    def liveness(self) -> str:
        (url,) = [a.removeprefix("--liveness=") for a in self.args if a.startswith("--liveness=")]
        return url

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def lease(kube: KubeHarness, name: str) -> dict[str, Any] | None:
    assert kube.http is not None
    resp = kube.http.get(LEASE_PATH.format(ns=kube.namespace, name=name))
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def holder_pod(kube: KubeHarness, name: str) -> str | None:
    spec = (lease(kube, name) or {}).get("spec") or {}
    identity = str(spec.get("holderIdentity") or "")
    return identity.rsplit("_", 1)[0] if identity else None


def lease_name(args: list[str]) -> str:
    (name,) = [a.removeprefix("--leader-election=") for a in args if a.startswith("--leader-election=")]
    return name


@pytest.fixture
def replicas(kube: KubeHarness, tmp_path: Path) -> Any:
    started: list[Replica] = []
    args, env = chart_operator(kube.namespace)

    def start(pod: str) -> Replica:
        replica = Replica(kube, tmp_path, pod, args, env)
        started.append(replica)
        return replica

    yield start, lease_name(args)
    for replica in started:
        replica.stop(signal.SIGKILL)


def test_the_chart_runs_the_same_arguments_in_every_replica(kube: KubeHarness) -> None:
    args, env = chart_operator(kube.namespace)
    assert not any(a.startswith(("--namespace", "--peering", "--priority")) for a in args), args
    assert env["TAKO_OPERATOR_NAMESPACES"] == kube.namespace
    assert lease_name(args) == "tako-operator"


def test_killed_leader_mid_burst_every_job_gets_one_pod(kube: KubeHarness, replicas: Any) -> None:
    """Two replicas as the chart starts them: one leads and reconciles; SIGKILL it mid-burst; the
    follower takes over once the lease expires and every job finishes with exactly one Pod."""
    start, name = replicas
    a, b = start("tako-operator-a"), start("tako-operator-b")
    assert a.args[1:] != b.args[1:] and [x.split("=")[0] for x in a.args] == [x.split("=")[0] for x in b.args]
    leader_pod = wait_for(lambda: holder_pod(kube, name), timeout=60, what="a leader")
    leader, follower = (a, b) if leader_pod == a.pod else (b, a)
    # Both answer the liveness probe (the follower through its own endpoint, the leader through kopf's).
    for replica in (leader, follower):
        wait_for(lambda r=replica: _alive(r.liveness), timeout=60, what=f"{replica.pod} liveness")

    jobs = [f"burst-{i:02d}" for i in range(30)]
    with BusyKubelet(kube):
        for job in jobs[:15]:
            kube.create("pythonjobs", sample_job(job))
        wait_for(lambda: len(kube.pod_order) >= 5, timeout=60, what="the leader to start the burst")
        leader.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        for job in jobs[15:]:
            kube.create("pythonjobs", sample_job(job))
        wait_for(lambda: holder_pod(kube, name) == follower.pod, timeout=60, what="the follower to take over")
        print(f"took over {time.monotonic() - killed_at:.1f} s after the leader's SIGKILL")

        def all_succeeded() -> bool:
            phases = [((kube.get("pythonjobs", j) or {}).get("status") or {}).get("phase") for j in jobs]
            return all(p == "Succeeded" for p in phases)

        wait_for(all_succeeded, timeout=180, interval=0.5, what="every job of the burst to succeed")
    assert sorted(kube.pod_order) == sorted(f"{j}-pod" for j in jobs), "each job exactly one Pod"
    for job in jobs:
        assert kube.get("pythonjobs", job)["status"]["attempts"] == 1
    assert follower.proc.poll() is None, "the new leader keeps running"
    spec = (lease(kube, name) or {})["spec"]
    assert spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 15
    # The follower reconciled nothing before it led: its first reconcile comes after "leads".
    text = follower.log.read_text()
    assert "leads (lease" in text


def _alive(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_hands_the_lease_over_at_once(kube: KubeHarness, replicas: Any) -> None:
    """A leader stopped cleanly releases its Lease: the follower leads at its next try (every 2 s),
    long before the 15 s lease would have expired, and runs the next job."""
    start, name = replicas
    a, b = start("tako-operator-a"), start("tako-operator-b")
    leader_pod = wait_for(lambda: holder_pod(kube, name), timeout=60, what="a leader")
    leader, follower = (a, b) if leader_pod == a.pod else (b, a)
    time.sleep(1.0)  # let the follower see the lease once
    assert leader.stop(signal.SIGTERM) == 0
    stopped_at = time.monotonic()
    assert (lease(kube, name) or {})["spec"]["holderIdentity"] in ("", None) or holder_pod(
        kube, name
    ) == follower.pod
    wait_for(lambda: holder_pod(kube, name) == follower.pod, timeout=60, what="the follower to lead")
    took = time.monotonic() - stopped_at
    print(f"follower led {took:.1f} s after the leader exited")
    assert took < 15, f"took {took:.1f} s: as long as an expiry, so the lease was not released"
    with BusyKubelet(kube):
        kube.create("pythonjobs", sample_job("after-handover"))
        wait_for(
            lambda: (
                ((kube.get("pythonjobs", "after-handover") or {}).get("status") or {}).get("phase")
                == "Succeeded"
            ),
            timeout=60,
            what="the job run by the new leader",
        )
