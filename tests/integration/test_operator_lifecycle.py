"""The real operator (kopf) against kmock: objects it creates, and status through a Pod's life.

kmock has no kubelet: the `kubelet` fixture patches Pod status and serves container logs the way a
kubelet would (see conftest.py). Everything else is the product's code over real HTTP.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kube_harness import KubeHarness, wait_for
from operator_support import FakeKubelet, envelope, phase_of, sample_job, wait_phase

pytestmark = pytest.mark.timeout(60)


def _events(kube: KubeHarness, job: str) -> list[str]:
    return [
        e.get("reason", "") for e in kube.list("events") if (e.get("involvedObject") or {}).get("name") == job
    ]


def test_sample_job_creates_secure_pod_policy_and_configmap(kube: KubeHarness, run_operator: Any) -> None:
    run_operator()
    created = kube.create("pythonjobs", sample_job("hello", code="print('hi')"))
    uid = created["metadata"]["uid"]
    pod = FakeKubelet(kube).wait_pod("hello")

    spec = pod["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] > 0
    assert container["resources"]["limits"]["memory"]
    assert container["command"][-1] == "run"

    owner = {"kind": "PythonJob", "name": "hello", "uid": uid, "controller": True}
    assert owner.items() <= pod["metadata"]["ownerReferences"][0].items()

    policies = kube.list("networkpolicies")
    assert len(policies) == 1
    policy = policies[0]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert owner.items() <= policy["metadata"]["ownerReferences"][0].items()

    code = kube.get("configmaps", "hello-code")
    assert code is not None and code["data"]["main.py"] == "print('hi')"
    assert owner.items() <= code["metadata"]["ownerReferences"][0].items()
    runner_name = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "runner")
    runner_cm = kube.get("configmaps", runner_name)
    assert runner_cm is not None and "runner.py" in runner_cm["data"]

    status = kube.get("pythonjobs", "hello")["status"]  # type: ignore[index]
    assert status["phase"] == "Pending" and status["attempts"] == 1 and status["podName"] == "hello-pod"


def test_policy_selects_only_its_own_job(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("one"))
    kube.create("pythonjobs", sample_job("two"))
    pods = {name: kubelet.wait_pod(name) for name in ("one", "two")}
    wait_for(lambda: len(kube.list("networkpolicies")) == 2, what="two policies")
    for policy in kube.list("networkpolicies"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        matching = [n for n, p in pods.items() if selector.items() <= p["metadata"]["labels"].items()]
        assert matching == [policy["metadata"]["ownerReferences"][0]["name"]]


def test_success_records_result_deletes_pod_and_emits_events(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("ok"))
    pod = kubelet.wait_pod("ok")["metadata"]["name"]
    kubelet.run(pod)
    wait_phase(kube, "ok", "Running")
    kubelet.terminate(pod, 0, envelope(0, "42\n", output={"answer": 42}))
    job = wait_phase(kube, "ok", "Succeeded")
    status = job["status"]
    assert status["stdout"] == "42\n"
    assert status["exitCode"] == 0
    assert status["output"] == {"answer": 42}
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert (
        conditions["Ready"] == "True"
        and conditions["Succeeded"] == "True"
        and conditions["Failed"] == "False"
    )
    wait_for(lambda: kube.get("pods", pod) is None, what="pod deleted after the result was recorded")
    wait_for(lambda: kube.get("configmaps", "ok-code") is None, what="code configmap cleaned up")
    assert "Succeeded" in _events(kube, "ok")


def test_user_failure_is_classified_and_not_retried(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("boom", code="1/0"))
    pod = kubelet.wait_pod("boom")["metadata"]["name"]
    stderr = (
        'Traceback (most recent call last):\n  File "/code/main.py", line 1\n'
        "ZeroDivisionError: division by zero\n"
    )
    kubelet.run(pod)
    # The runner exits 0 after reporting; the user's exit code travels in the envelope.
    kubelet.terminate(pod, 0, envelope(1, "", stderr))
    status = wait_phase(kube, "boom", "Failed")["status"]
    assert status["error"]["type"] == "division_error"
    assert status["exitCode"] == 1
    assert status["attempts"] == 1
    time.sleep(0.5)
    assert kube.creations("pods") == 1, "a user-code failure must never be retried"


def test_runner_timeout_and_active_deadline(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("slow", timeoutSeconds=1))
    kube.create("pythonjobs", sample_job("stuck", timeoutSeconds=1))
    # The runner's own deadline: it reports execution_timeout in its envelope.
    slow = kubelet.wait_pod("slow")["metadata"]["name"]
    timeout_env = envelope(-9, "partial\n", error={"type": "execution_timeout", "message": "exceeded 1s"})
    kubelet.terminate(slow, 0, timeout_env)
    status = wait_phase(kube, "slow", "Timeout")["status"]
    assert status["error"]["type"] == "execution_timeout"
    assert status["stdout"] == "partial\n"
    # activeDeadlineSeconds: the kubelet kills the Pod and says DeadlineExceeded, no envelope.
    stuck = kubelet.wait_pod("stuck")["metadata"]["name"]
    kubelet.run(stuck)
    kube.patch_status("pods", stuck, {"phase": "Failed", "reason": "DeadlineExceeded"})
    status = wait_phase(kube, "stuck", "Timeout")["status"]
    assert status["error"]["type"] in ("execution_timeout", "startup_timeout")
    assert kube.creations("pods") == 2


def test_operator_side_deadline_bound(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    """Neither the runner nor the kubelet ends the Pod: the operator's own bound does."""
    # startup 10 + timeout 1 + grace 0 -> the Pod's activeDeadlineSeconds and the operator's bound: 11 s
    # (kmock has no kubelet to enforce activeDeadlineSeconds, so only the operator's bound can end it)
    run_operator(deadline_grace_seconds=0)
    kube.create("pythonjobs", sample_job("hang", timeoutSeconds=1, startupTimeoutSeconds=10))
    pod = kubelet.wait_pod("hang")["metadata"]["name"]
    kubelet.run(pod)
    assert kube.get("pods", pod)["spec"]["activeDeadlineSeconds"] == 11
    status = wait_phase(kube, "hang", "Timeout", timeout=60)["status"]
    assert status["error"]["type"] in ("execution_timeout", "startup_timeout")
    wait_for(lambda: kube.get("pods", pod) is None, what="the hung pod deleted")


def test_oom_from_container_status(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("hog"))
    pod = kubelet.wait_pod("hog")["metadata"]["name"]
    kubelet.run(pod)
    kubelet.terminate(pod, 137, None, reason="OOMKilled")
    status = wait_phase(kube, "hog", "OOM")["status"]
    assert status["error"]["type"] == "oom"
    assert kube.creations("pods") == 1


def test_cancel_switch_stops_running_job(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("stopme"))
    pod = kubelet.wait_pod("stopme")["metadata"]["name"]
    kubelet.run(pod)
    wait_phase(kube, "stopme", "Running")
    kube.patch("pythonjobs", "stopme", {"spec": {"cancel": True}})
    status = wait_phase(kube, "stopme", "Cancelled")["status"]
    assert status["error"]["type"] == "cancelled"
    wait_for(lambda: kube.get("pods", pod) is None, what="cancelled pod deleted")


def test_deleting_a_job_removes_its_pod(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    """kmock has no garbage collector, so this shows the operator's own cleanup on deletion."""
    run_operator()
    kube.create("pythonjobs", sample_job("gone"))
    pod = kubelet.wait_pod("gone")["metadata"]["name"]
    kube.delete("pythonjobs", "gone")
    wait_for(lambda: kube.get("pods", pod) is None, what="pod of a deleted job removed")
    wait_for(lambda: not kube.list("networkpolicies"), what="policies of a deleted job removed")


def test_eviction_is_retried_with_a_new_pod(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("evicted"))
    first = kubelet.wait_pod("evicted")["metadata"]["name"]
    kubelet.run(first)
    kubelet.evict(first)

    def second_attempt() -> dict[str, Any] | None:
        status = (kube.get("pythonjobs", "evicted") or {}).get("status") or {}
        return status if status.get("attempts") == 2 and status.get("podName") != first else None

    status = wait_for(second_attempt, what="attempt 2")
    assert kube.get("pods", first) is None
    second = status["podName"]
    kubelet.succeed(second, stdout="second try\n")
    final = wait_phase(kube, "evicted", "Succeeded")["status"]
    assert final["attempts"] == 2 and final["stdout"] == "second try\n"
    assert kube.creations("pods") == 2
    assert "Retrying" in _events(kube, "evicted")


def test_infrastructure_retries_are_bounded(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator(max_attempts=2)
    kube.create("pythonjobs", sample_job("flaky"))
    for attempt in (1, 2):
        pod = wait_for(
            lambda a=attempt: (
                ((kube.get("pythonjobs", "flaky") or {}).get("status") or {}).get("attempts") == a
                and kube.get("pods", "flaky-pod" if a == 1 else f"flaky-pod-a{a}")
            ),
            what=f"attempt {attempt}",
        )
        kube.delete("pods", pod["metadata"]["name"])  # the pod vanishes (node lost)
    status = wait_phase(kube, "flaky", "Failed")["status"]
    assert status["error"]["type"] == "infrastructure_error"
    assert "2 attempts" in status["error"]["message"]
    assert kube.creations("pods") == 2


def test_image_pull_failure_is_reported_not_retried(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("badimage"))
    pod = kubelet.wait_pod("badimage")["metadata"]["name"]
    kube.patch_status(
        "pods",
        pod,
        {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "job", "state": {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}}
            ],
        },
    )
    status = wait_phase(kube, "badimage", "Failed")["status"]
    assert status["error"]["type"] == "image_pull_error"
    assert "InvalidImageName" in status["error"]["message"]
    assert kube.creations("pods") == 1


def test_finished_job_is_deleted_after_ttl(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    run_operator()
    # 5 s, not 1: the test must see "short" Succeeded before its TTL removes it, even on a loaded machine.
    kube.create("pythonjobs", sample_job("short", ttlSecondsAfterFinished=5))
    kube.create("pythonjobs", sample_job("kept"))
    for name in ("short", "kept"):
        kubelet.succeed(kubelet.wait_pod(name)["metadata"]["name"])
        wait_phase(kube, name, "Succeeded")
    wait_for(lambda: kube.get("pythonjobs", "short") is None, timeout=30, what="TTL deletion")
    assert phase_of(kube, "kept") == "Succeeded", "a job within its TTL (default 1h) stays"


def test_unknown_job_type_fails_with_clear_status(kube: KubeHarness, run_operator: Any) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("typo", jobType="no-such-type"))
    status = wait_phase(kube, "typo", "Failed")["status"]
    assert status["error"]["type"] == "config_error"
    assert "no-such-type" in status["error"]["message"]
    assert kube.creations("pods") == 0


def test_job_type_resolution(kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet) -> None:
    kube.create(
        "pythonjobtypes",
        {
            "apiVersion": "takovm.dev/v1alpha1",
            "kind": "PythonJobType",
            "metadata": {"name": "science"},
            "spec": {
                "image": "registry.example/science:1",
                "resources": {"memory": "1Gi", "cpu": "2"},
                "timeoutSeconds": 77,
                "env": [{"name": "MODE", "value": "fast"}],
            },
        },
    )
    run_operator()
    kube.create("pythonjobs", sample_job("typed", jobType="science"))
    kube.create("pythonjobs", sample_job("plain"))
    typed = kubelet.wait_pod("typed")
    container = typed["spec"]["containers"][0]
    assert container["image"] == "registry.example/science:1"
    assert container["resources"]["limits"] == {"memory": "1Gi", "cpu": "2"}
    code = kube.get("configmaps", "typed-code")
    assert (
        code is not None
        and '"MODE": "fast"' in code["data"]["job.json"]
        and '"timeout": 77' in code["data"]["job.json"]
    )
    plain = kubelet.wait_pod("plain")
    assert plain["spec"]["containers"][0]["image"] == "python:3.11-slim"  # the built-in default


def test_requirements_open_install_egress_then_close_it(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet
) -> None:
    kube.create(
        "pythonjobtypes",
        {
            "apiVersion": "takovm.dev/v1alpha1",
            "kind": "PythonJobType",
            "metadata": {"name": "open"},
            "spec": {"image": "python:3.11-slim", "allowRuntimeRequirements": True},
        },
    )
    run_operator()
    kube.create("pythonjobs", sample_job("deps", jobType="open", requirements=["six==1.16.0"]))
    pod = kubelet.wait_pod("deps")
    name = pod["metadata"]["name"]
    assert pod["metadata"]["labels"]["takovm.dev/egress"] == "install"
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["install"]
    wait_for(lambda: kube.get("networkpolicies", "deps-install-egress"), what="install egress policy")
    # The install init container ends: the operator removes the label and the policy.
    kube.set_log(name, "install", envelope(0, "installed\n"))
    kube.patch_status(
        "pods",
        name,
        {
            "phase": "Pending",
            "initContainerStatuses": [{"name": "install", "state": {"terminated": {"exitCode": 0}}}],
        },
    )
    wait_for(
        lambda: (
            "takovm.dev/egress"
            not in ((kube.get("pods", name) or {}).get("metadata") or {}).get("labels", {})
        ),
        what="egress label removed",
    )
    wait_for(
        lambda: kube.get("networkpolicies", "deps-install-egress") is None, what="install policy removed"
    )
    assert kube.get("networkpolicies", "deps-deny") is not None, "deny-all stays"
    kubelet.succeed(name)
    wait_phase(kube, "deps", "Succeeded")


def test_requirements_refused_by_job_type(kube: KubeHarness, run_operator: Any) -> None:
    run_operator()
    kube.create("pythonjobs", sample_job("nodeps", requirements=["requests"]))
    status = wait_phase(kube, "nodeps", "Failed")["status"]
    assert status["error"]["type"] == "config_error"
    assert "spec.requirements" in status["error"]["message"]
    assert kube.creations("pods") == 0
