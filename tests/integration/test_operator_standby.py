"""Standby Pods end to end: the real operator (kopf) against kmock claims a waiting Pod, pushes the job
to the REAL runner in standby mode, and the job's output comes back in the PythonJob's status.

kmock has no kubelet and this machine runs no Pods, so `StandbyKubelet` stands in for one: for every
standby Pod the operator creates it starts `runner/tako_runner/standby.py` as a plain local process
(not in gVisor: the sandbox itself is covered by tests/sandbox) with the Pod's environment, bound to
its own loopback address (127.0.0.2, 127.0.0.3, ...; all of 127/8 reaches lo on Linux) and the Pod's
port, reports that address as status.podIP with the Pod Ready, and when the process exits stores its
stdout as the container log and the exit as the container's terminated state, like a kubelet.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, OperatorThread, operator_options, sample_job, wait_phase

from tako_operator.core import builders
from tako_operator.core import standby as sb
from tako_operator.settings import PodSettings, StandbySettings
from tako_runner import standby as standby_runner
from tako_vm.models.crd import PythonJob, PythonJobTypeSpec

pytestmark = [pytest.mark.timeout(90)]
STANDBY_SCRIPT = Path(standby_runner.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StandbyKubelet:
    """Runs each standby Pod's runner as a local process on its own loopback IP (see module doc)."""

    def __init__(self, kube: KubeHarness, root: Path) -> None:
        self.kube = kube
        self.root = root
        self.ips = (f"127.0.0.{n}" for n in itertools.count(2))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ip_of: dict[str, str] = {}
        self.cold: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="standby-kubelet", daemon=True)

    def __enter__(self) -> StandbyKubelet:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                alive = {p["metadata"]["name"]: p for p in self.kube.list("pods")}
                for name, pod in alive.items():
                    if name not in self.procs and sb.is_standby(pod):
                        self._start(pod)
                    elif name not in self.procs and name not in self.cold and not sb.is_standby(pod):
                        self.cold.add(name)  # a cold job Pod: finish it like operator_support's kubelet
                        FakeKubelet(self.kube).succeed(name, stdout="cold\n")
                for name, proc in list(self.procs.items()):
                    if name not in alive and proc.poll() is None:
                        proc.kill()  # the Pod was deleted
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by the tests through `error`
            self.error = exc

    def _start(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        (container,) = pod["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == sb.PORT_NAME)
        env = {"PATH": os.environ.get("PATH", "/usr/bin")}
        env.update({v["name"]: v["value"] for v in container.get("env", [])})
        ip = next(self.ips)
        argv = [sys.executable, "-I", str(STANDBY_SCRIPT), "--host", ip, "--port", str(port)]
        for volume, option in (("code", "code"), ("input", "input"), ("output", "output"), ("tmp", "work")):
            path = self.root / name / volume
            path.mkdir(parents=True)
            argv += [f"--{option}-dir", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.procs[name], self.ip_of[name] = proc, ip
        deadline = time.monotonic() + 15
        while not _listening(ip, port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"standby runner for {name} did not listen on {ip}:{port}")
            time.sleep(0.02)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.kube.patch_status(
            "pods",
            name,
            {
                "phase": "Running",
                "podIP": ip,
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "job", "state": {"running": {"startedAt": now}}}],
            },
        )
        threading.Thread(target=self._wait, args=(name, proc), daemon=True).start()

    def _wait(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        out, _ = proc.communicate()
        if self.stop.is_set() or self.kube.get("pods", name) is None:
            return
        self.kube.set_log(name, "job", out.decode())
        code = proc.returncode
        self.kube.patch_status(
            "pods",
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "job", "state": {"terminated": {"exitCode": code, "reason": "Completed"}}}
                ],
            },
        )


def _listening(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((ip, port)) == 0


def post(url: str, token: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def job_type(size: int) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJobType",
        "metadata": {"name": "fast"},
        "spec": {
            "image": "python:3.11-slim",
            "resources": {"memory": "256Mi", "cpu": "500m"},
            "standbyPods": size,
        },
    }


def status_of(kube: KubeHarness, job: str) -> dict[str, Any]:
    return dict((kube.get("pythonjobs", job) or {}).get("status") or {})


def waiting_pods(kube: KubeHarness, ready: bool = True) -> list[dict[str, Any]]:
    return [
        p for p in kube.list("pods") if sb.is_standby(p) and sb.is_live(p) and (sb.is_ready(p) or not ready)
    ]


@pytest.fixture
def standby_env(kube: KubeHarness, tmp_path: Path) -> Any:
    options = operator_options(kube, tmp_path)
    options.config.standby = StandbySettings(port=free_port())
    with StandbyKubelet(kube, tmp_path / "pods") as kubelet:
        operator = OperatorThread(options).start()
        try:
            yield kubelet
        finally:
            operator.stop()
        assert kubelet.error is None, kubelet.error


@pytest.mark.slow
def test_job_runs_in_a_claimed_standby_pod_and_the_pool_refills(kube: KubeHarness, standby_env: Any) -> None:
    kubelet: StandbyKubelet = standby_env
    kube.create("pythonjobtypes", job_type(2))
    first = wait_for(lambda: len(waiting_pods(kube)) == 2 and waiting_pods(kube), what="2 ready standby pods")
    policy = kube.get("networkpolicies", sb.standby_policy_name())
    assert policy is not None and policy["spec"]["egress"] == []

    kube.create("pythonjobs", sample_job("warm1", code="print('warm hello')", jobType="fast"))
    done = wait_phase(kube, "warm1", "Succeeded")
    job = done["status"]["podName"]
    assert job in {p["metadata"]["name"] for p in first}, "the job did not get a standby pod"
    assert done["status"]["stdout"] == "warm hello\n" and done["status"]["attempts"] == 1
    assert "warm1-pod" not in kube.pod_order  # no cold Pod was created

    # A running claimed Pod: relabelled for its job, owned by it, deadline bounded, no second push.
    # (the local runner's input sits next to its work directory, the code's cwd)
    code = "import json, time; print('warm', json.load(open('../input/data.json'))['n']); time.sleep(1.5)"
    kube.create("pythonjobs", sample_job("warm2", code=code, jobType="fast", inputData={"n": 7}))
    name = wait_for(lambda: status_of(kube, "warm2").get("podName"), what="podName")
    pod = wait_for(
        lambda: (p := kube.get("pods", name)) and sb.pushed(p) and p, what="the claimed pod released"
    )
    labels = pod["metadata"]["labels"]
    assert sb.LABEL_STANDBY not in labels and sb.LABEL_POOL not in labels
    assert labels[builders.LABEL_JOB] == "warm2"
    uid = (kube.get("pythonjobs", "warm2") or {})["metadata"]["uid"]
    assert pod["metadata"]["annotations"][sb.ANNOTATION_CLAIMED_BY] == uid
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("PythonJob", "warm2", True)
    assert pod["spec"]["activeDeadlineSeconds"] < StandbySettings().max_age_seconds
    url = f"http://{kubelet.ip_of[name]}:{pod['spec']['containers'][0]['ports'][0]['containerPort']}/job"
    token = sb.pod_token(pod)
    assert token is not None
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        post(url, token, {"job_uid": "intruder", "code": "print('again')", "config": {}})
    finished = wait_phase(kube, "warm2", "Succeeded")
    assert finished["status"]["stdout"] == "warm 7\n"  # the pushed input; the second push never ran

    # The pool is back to two waiting Pods, none of them one that ran a job.
    used = {job, name}
    refilled = wait_for(lambda: len(waiting_pods(kube)) == 2 and waiting_pods(kube), what="pool refilled")
    assert not used & {p["metadata"]["name"] for p in refilled}


@pytest.mark.slow
def test_wrong_token_is_refused_and_claimed_pods_are_never_reused(
    kube: KubeHarness, standby_env: Any
) -> None:
    kubelet: StandbyKubelet = standby_env
    kube.create("pythonjobtypes", job_type(1))
    (pod,) = wait_for(lambda: waiting_pods(kube), what="a ready standby pod")
    name = pod["metadata"]["name"]
    url = f"http://{kubelet.ip_of[name]}:{pod['spec']['containers'][0]['ports'][0]['containerPort']}/job"
    assert post(url, "not-the-token-of-this-pod", {"job_uid": "x", "code": "print(1)", "config": {}}) == 401

    for index in range(3):
        wait_for(lambda: waiting_pods(kube), what="a ready standby pod")  # else the job would go cold
        kube.create("pythonjobs", sample_job(f"seq{index}", code=f"print({index})", jobType="fast"))
        done = wait_phase(kube, f"seq{index}", "Succeeded", timeout=40)
        assert done["status"]["stdout"] == f"{index}\n"
    pods = [status_of(kube, f"seq{i}")["podName"] for i in range(3)]
    assert len(set(pods)) == 3, pods  # one Pod, one job
    assert pods[0] == name  # the wrong token did not spoil the Pod for its real job
    # Each Pod's runner accepted one push and ran one job: one envelope per process, then it exited.
    assert all(kubelet.procs[p].poll() is not None for p in pods if p in kubelet.procs)


def test_ineligible_job_takes_the_cold_path(kube: KubeHarness, standby_env: Any) -> None:
    kube.create("pythonjobtypes", job_type(1))
    wait_for(lambda: waiting_pods(kube), what="a ready standby pod")
    kube.create("pythonjobs", sample_job("labelled", jobType="fast", podLabels={"team": "a"}))
    done = wait_phase(kube, "labelled", "Succeeded")
    assert done["status"]["podName"] == "labelled-pod" and done["status"]["stdout"] == "cold\n"
    assert len(waiting_pods(kube)) == 1  # untouched


def test_failed_push_deletes_the_standby_pod_and_the_job_goes_cold(
    kube: KubeHarness, standby_env: Any
) -> None:
    kube.create("pythonjobtypes", job_type(1))
    (pod,) = wait_for(lambda: waiting_pods(kube), what="a ready standby pod")
    name = pod["metadata"]["name"]
    kube.patch_status("pods", name, {"podIP": "127.0.0.254"})  # nothing listens there: the push fails
    kube.create("pythonjobs", sample_job("unlucky", jobType="fast"))
    done = wait_phase(kube, "unlucky", "Succeeded")
    assert done["status"]["podName"] == "unlucky-pod"  # the cold path, at once (attempt 1)
    assert done["status"]["attempts"] == 1
    wait_for(lambda: kube.get("pods", name) is None, what="the claimed standby pod deleted")


def test_a_claim_interrupted_before_the_status_write_is_resumed_not_run_cold(
    kube: KubeHarness, tmp_path: Path
) -> None:
    """An operator that stopped between claiming a standby Pod and writing the job's status: the next
    one finds the Pod by its claim annotation, pushes the job (once) and follows that Pod."""
    port = free_port()
    settings = StandbySettings(port=port)
    kube.create("pythonjobtypes", job_type(1))
    created = kube.create("pythonjobs", sample_job("resumed", code="print('resumed')", jobType="fast"))
    model = PythonJob.model_validate(created)
    type_spec = PythonJobTypeSpec.model_validate(job_type(1)["spec"])
    pod = sb.build_standby_pod(
        kube.namespace, "fast", type_spec, PodSettings(), settings, token="r" * 43, suffix="left"
    )
    pod["status"] = {"startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    claimed = sb.claim_patch(model, pod, deadline=600)["metadata"]
    pod["metadata"]["labels"].update(claimed["labels"])
    pod["metadata"]["annotations"].update(claimed["annotations"])
    pod["metadata"]["ownerReferences"] = claimed["ownerReferences"]
    kube.create("pods", pod)
    with StandbyKubelet(kube, tmp_path / "pods") as kubelet:
        wait_for(lambda: (p := kube.get("pods", "tako-standby-fast-left")) and sb.is_ready(p), what="ready")
        options = operator_options(kube, tmp_path)
        options.config.standby = settings
        operator = OperatorThread(options).start()
        try:
            done = wait_phase(kube, "resumed", "Succeeded")
        finally:
            operator.stop()
        assert kubelet.error is None, kubelet.error
    assert done["status"]["podName"] == "tako-standby-fast-left"
    assert done["status"]["stdout"] == "resumed\n"
    assert "resumed-pod" not in kube.pod_order


@pytest.mark.slow
def test_concurrent_jobs_never_share_a_standby_pod(kube: KubeHarness, standby_env: Any) -> None:
    kubelet: StandbyKubelet = standby_env
    kube.create("pythonjobtypes", job_type(2))
    wait_for(lambda: len(waiting_pods(kube)) == 2, what="2 ready standby pods")
    for index in range(5):
        kube.create("pythonjobs", sample_job(f"burst{index}", code=f"print('job {index}')", jobType="fast"))
    done = [wait_phase(kube, f"burst{index}", "Succeeded", timeout=60) for index in range(5)]
    pods = [d["status"]["podName"] for d in done]
    assert len(set(pods)) == 5, pods
    warm = [i for i, pod in enumerate(pods) if pod.startswith(sb.standby_pod_prefix("fast"))]
    assert len(warm) >= 2, pods  # the two waiting Pods were used
    for index in warm:  # each warm Pod ran exactly its own job
        assert done[index]["status"]["stdout"] == f"job {index}\n"
    for index in set(range(5)) - set(warm):
        assert done[index]["status"]["stdout"] == "cold\n" and pods[index] in kubelet.cold
