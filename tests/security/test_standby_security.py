"""Security promises of standby Pods (the cluster warm pool), each with a test.

NetworkPolicies are not enforced here (no CNI), so these tests check which policies SELECT a standby
Pod at each stage of its life, applying the operator's own patches with JSON merge-patch semantics
(RFC 7386, what the operator sends): waiting = only the standby policy (ingress from the operator to
one port, no egress); claimed and released = only the job's deny-all. The runner-side promises run
the real standby runner as a local process.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tako_operator.core import builders
from tako_operator.core import standby as sb
from tako_operator.settings import PodSettings, StandbySettings
from tako_runner import standby as standby_runner
from tako_runner.outcome import parse_envelope
from tako_vm.models.crd import PythonJob, PythonJobTypeSpec

NS = "jobs"
SETTINGS = PodSettings()
STANDBY = StandbySettings(operator_namespace="tako-system")
TYPE = PythonJobTypeSpec.model_validate({"image": "python:3.11-slim", "standbyPods": 1})
NOW_POD_START = "2026-01-01T00:00:00Z"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server applies for application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selects(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels") or {}
    return wanted.items() <= (pod["metadata"].get("labels") or {}).items()


def job(name: str = "j", uid: str = "uid-j") -> PythonJob:
    return PythonJob.model_validate(
        {"metadata": {"name": name, "namespace": NS, "uid": uid}, "spec": {"code": "print(1)"}}
    )


def waiting_pod(suffix: str = "a1b2") -> dict[str, Any]:
    pod = sb.build_standby_pod(NS, "default", TYPE, SETTINGS, STANDBY, token="k" * 43, suffix=suffix)
    pod["metadata"]["resourceVersion"] = "7"
    pod["status"] = {"phase": "Running", "podIP": "10.1.2.3", "startTime": NOW_POD_START}
    return pod


def all_policies(*jobs: PythonJob) -> list[dict[str, Any]]:
    policies = [sb.build_standby_policy(NS, STANDBY)]
    for each in jobs:
        policies += [
            builders.build_deny_all_policy(each),
            builders.build_install_egress_policy(each, SETTINGS),
        ]
    return policies


def test_waiting_standby_pod_accepts_only_the_operator_on_one_port_and_has_no_egress() -> None:
    pod = waiting_pod()
    chosen = [p for p in all_policies(job("other", "uid-o")) if selects(p, pod)]
    assert [p["metadata"]["name"] for p in chosen] == [sb.standby_policy_name()]
    (policy,) = chosen
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": STANDBY.port}]
    (peer,) = rule["from"]
    assert peer == {
        "podSelector": {"matchLabels": STANDBY.operator_pod_labels},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tako-system"}},
    }


def test_claim_then_release_leaves_only_the_jobs_deny_all_policy() -> None:
    target = job()
    policies = all_policies(target, job("other", "uid-o"))
    claim = sb.plan_claim(
        {**target.model_dump(by_alias=True, exclude_none=True), "metadata": target.metadata},
        TYPE.model_dump(by_alias=True),
        SETTINGS,
        waiting_pod(),
        datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=datetime.UTC),
    )
    assert claim is not None
    claimed = merge_patch(waiting_pod(), claim.patch)
    # While the push is on its way: the job's deny-all already selects it (no egress either way).
    assert {p["metadata"]["name"] for p in policies if selects(p, claimed)} == {
        sb.standby_policy_name(),
        builders.deny_policy_name(target),
    }
    released = merge_patch(claimed, sb.release_patch())
    (only,) = [p for p in policies if selects(p, released)]
    assert only["metadata"]["name"] == builders.deny_policy_name(target)
    assert only["spec"]["ingress"] == [] and only["spec"]["egress"] == []
    assert released["metadata"]["ownerReferences"] == [builders.owner_reference(target)]
    assert sb.claimed_by(released) == "uid-j" and sb.pushed(released)


def test_no_stage_of_a_standby_pod_is_selected_by_an_egress_allowing_policy() -> None:
    target = job()
    install = builders.build_install_egress_policy(target, SETTINGS)
    for pod in (waiting_pod(), merge_patch(waiting_pod(), sb.release_patch())):
        assert not selects(install, pod)
        assert builders.LABEL_EGRESS not in pod["metadata"]["labels"]


def test_every_standby_pod_gets_its_own_token_and_it_is_not_in_labels_or_annotations() -> None:
    first = sb.build_standby_pod(NS, "default", TYPE, SETTINGS, STANDBY, token="a" * 43, suffix="1")
    second = sb.build_standby_pod(NS, "default", TYPE, SETTINGS, STANDBY, token="b" * 43, suffix="2")
    assert sb.pod_token(first) != sb.pod_token(second)
    for pod in (first, second):
        visible = json.dumps([pod["metadata"].get("labels"), pod["metadata"].get("annotations")])
        assert str(sb.pod_token(pod)) not in visible


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_user_code_never_sees_the_standby_token(tmp_path: Path) -> None:
    token = "secret-standby-token-" + "x" * 20
    port = _free_port()
    argv = [sys.executable, "-I", standby_runner.__file__, "--host", "127.0.0.1", "--port", str(port)]
    for name in ("code", "input", "output", "work"):
        (tmp_path / name).mkdir()
        argv += [f"--{name}-dir", str(tmp_path / name)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), sb.TOKEN_ENV: token}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "standby runner did not listen"
            time.sleep(0.02)
        code = "import os; print(sorted(os.environ)); print(os.environ.get('TAKO_STANDBY_TOKEN'))"
        body = {"job_uid": "u", "code": code, "input_data": {}, "config": {"timeout": 10}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/job",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    envelope = parse_envelope(out.decode())
    assert envelope is not None and envelope["exit_code"] == 0
    assert token not in envelope["stdout"] and sb.TOKEN_ENV not in envelope["stdout"]
    assert envelope["stdout"].endswith("None\n")
