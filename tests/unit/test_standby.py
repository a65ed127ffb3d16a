"""Standby Pods (the cluster warm pool): the pure builders, the pool plan and the claim plan."""

from __future__ import annotations

import datetime
from typing import Any

import kubernetes_validate
import pytest
from test_chart_pss import restricted_violations

from tako_operator.core import builders, objects
from tako_operator.core import standby as sb
from tako_operator.core.plan import Observed, plan
from tako_operator.settings import PodSettings, StandbySettings, settings_from_env
from tako_vm.models.crd import PythonJob, PythonJobTypeSpec

NS = "team-a"
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
SETTINGS = PodSettings()
STANDBY = StandbySettings(operator_namespace="tako-system")
TYPE = PythonJobTypeSpec.model_validate(
    {"image": "python:3.11-slim", "resources": {"memory": "256Mi", "cpu": "500m"}, "standbyPods": 2}
)
TYPE_DICT = TYPE.model_dump(by_alias=True, exclude_none=True)
TOKEN = "t" * 43


def standby_pod(suffix: str = "aaaa", **status: Any) -> dict[str, Any]:
    pod = sb.build_standby_pod(
        NS, "fast", TYPE, SETTINGS, STANDBY, token=TOKEN, suffix=suffix, type_uid="type-uid"
    )
    pod["metadata"]["resourceVersion"] = "42"
    pod["metadata"]["creationTimestamp"] = "2026-01-01T11:59:00Z"
    pod["status"] = status or {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "startTime": "2026-01-01T11:59:00Z",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return pod


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": "j1", "namespace": NS, "uid": "job-uid-1", "generation": 1},
        "spec": {"code": "print(1)", "jobType": "fast", "inputData": {"x": 1}, **spec},
    }


CURRENT = sb.spec_hash(NS, "fast", TYPE, SETTINGS, STANDBY)


# --- the standby Pod is a job Pod ------------------------------------------------------------------


def test_standby_pod_has_the_job_pods_security_and_resources() -> None:
    cold = builders.build_pod(PythonJob.model_validate(job()), TYPE, SETTINGS, attempt=1)
    warm = standby_pod()
    for key in (
        "runtimeClassName", "automountServiceAccountToken", "enableServiceLinks", "hostNetwork",
        "hostPID", "hostIPC", "securityContext", "restartPolicy", "terminationGracePeriodSeconds",
    ):  # fmt: skip
        assert warm["spec"][key] == cold["spec"][key], key
    (warm_c,), (cold_c,) = warm["spec"]["containers"], cold["spec"]["containers"]
    assert warm_c["securityContext"] == cold_c["securityContext"]
    assert warm_c["securityContext"]["readOnlyRootFilesystem"] is True
    assert warm_c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert (
        warm_c["resources"]
        == cold_c["resources"]
        == {
            "requests": {"memory": "256Mi", "cpu": "500m"},
            "limits": {"memory": "256Mi", "cpu": "500m"},
        }
    )
    assert warm["spec"]["runtimeClassName"] == "gvisor"
    assert warm["spec"]["automountServiceAccountToken"] is False
    assert warm_c["command"] == ["python3", "-I", "/runner/standby.py", "--port", "8790"]
    assert warm["spec"]["activeDeadlineSeconds"] == STANDBY.max_age_seconds
    assert "initContainers" not in warm["spec"]


def test_standby_pod_is_valid_kubernetes_and_carries_token_labels_and_owner() -> None:
    pod = sb.build_standby_pod(NS, "fast", TYPE, SETTINGS, STANDBY, token=TOKEN, suffix="ab12", type_uid="u")
    kubernetes_validate.validate(pod, "1.30", strict=True)
    assert pod["metadata"]["name"] == "tako-standby-fast-ab12"
    labels = pod["metadata"]["labels"]
    assert labels[sb.LABEL_STANDBY] == sb.STANDBY_WAITING and labels[sb.LABEL_POOL] == "fast"
    assert builders.LABEL_JOB not in labels  # no job's policy selects it before the claim
    assert sb.pod_token(pod) == TOKEN
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "PythonJobType" and "controller" not in owner  # a claim sets the controller
    runner = next(v for v in pod["spec"]["volumes"] if v["name"] == "runner")
    names = [s["configMap"]["name"] for s in runner["projected"]["sources"]]
    assert names == [builders.runner_configmap_name(), sb.standby_configmap_name()]
    code = next(v for v in pod["spec"]["volumes"] if v["name"] == "code")
    assert "emptyDir" in code  # filled by the push, not by a ConfigMap


def test_short_token_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        sb.build_standby_pod(NS, "fast", TYPE, SETTINGS, STANDBY, token="short", suffix="x")


def test_spec_hash_changes_with_the_job_type() -> None:
    bigger = TYPE.model_copy(update={"image": "python:3.12-slim"})
    assert sb.spec_hash(NS, "fast", bigger, SETTINGS, STANDBY) != CURRENT
    # ... but not with the pool size (resizing keeps the waiting Pods)
    resized = TYPE.model_copy(update={"standby_pods": 5})
    assert sb.spec_hash(NS, "fast", resized, SETTINGS, STANDBY) == CURRENT


# --- the standby NetworkPolicy ---------------------------------------------------------------------


def test_standby_policy_allows_only_operator_ingress_to_the_port_and_no_egress() -> None:
    policy = sb.build_standby_policy(NS, STANDBY)
    kubernetes_validate.validate(policy, "1.30", strict=True)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {sb.LABEL_STANDBY: sb.STANDBY_WAITING}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == []
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8790}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "tako-system"}}


def test_standby_policy_without_operator_labels_allows_nothing() -> None:
    policy = sb.build_standby_policy(NS, StandbySettings(operator_pod_labels={}))
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []


def test_settings_from_env_and_their_errors() -> None:
    settings = settings_from_env(
        {
            "TAKO_OPERATOR_STANDBY_PORT": "9000",
            "TAKO_OPERATOR_STANDBY_PUSH_FROM_NAMESPACE": "ops",
            "TAKO_OPERATOR_STANDBY_PUSH_FROM_LABELS": "a=b, c=d",
        }
    ).standby
    assert settings.port == 9000 and settings.operator_namespace == "ops"
    assert settings.operator_pod_labels == {"a": "b", "c": "d"}
    with pytest.raises(ValueError, match="PUSH_FROM_LABELS"):
        settings_from_env({"TAKO_OPERATOR_STANDBY_PUSH_FROM_LABELS": "nonsense"})
    with pytest.raises(ValueError, match="port"):
        StandbySettings(port=0)


# --- the pool plan ---------------------------------------------------------------------------------


def test_pool_plan_fills_replaces_and_never_touches_claimed_pods() -> None:
    assert sb.pool_plan(2, [], CURRENT) == sb.PoolPlan(create=2, delete=[])
    waiting = standby_pod("w1")
    claimed = standby_pod("c1")
    claimed["metadata"]["annotations"][sb.ANNOTATION_CLAIMED_BY] = "job-uid"
    finished = standby_pod("f1", phase="Failed")
    stale = standby_pod("s1")
    stale["metadata"]["annotations"][sb.ANNOTATION_SPEC] = "old"
    result = sb.pool_plan(2, [waiting, claimed, finished, stale], CURRENT)
    assert result.create == 1
    assert sorted(result.delete) == ["tako-standby-fast-f1", "tako-standby-fast-s1"]


def test_pool_plan_shrinks_newest_first_and_caps_the_size() -> None:
    old, new = standby_pod("old"), standby_pod("new")
    new["metadata"]["creationTimestamp"] = "2026-01-01T11:59:30Z"
    assert sb.pool_plan(1, [new, old], CURRENT) == sb.PoolPlan(create=0, delete=["tako-standby-fast-new"])
    assert sb.pool_plan(0, [old], CURRENT).delete == ["tako-standby-fast-old"]
    assert sb.pool_plan(1000, [], CURRENT).create == sb.MAX_POOL_SIZE


def test_choose_takes_the_oldest_ready_current_unreserved_pod() -> None:
    not_ready = standby_pod("nr", phase="Pending")
    old, new = standby_pod("old"), standby_pod("new")
    new["metadata"]["creationTimestamp"] = "2026-01-01T11:59:30Z"
    assert sb.choose([not_ready], CURRENT) is None
    assert sb.choose([new, old, not_ready], CURRENT)["metadata"]["name"] == "tako-standby-fast-old"  # type: ignore[index]
    chosen = sb.choose([new, old], CURRENT, exclude=frozenset({"tako-standby-fast-old"}))
    assert chosen is not None and chosen["metadata"]["name"] == "tako-standby-fast-new"
    assert sb.choose([old], "another-hash") is None


# --- the claim plan --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"requirements": ["six==1.16.0"]}, "requirements"),
        ({"code": None, "codeRef": {"name": "big", "key": "main.py"}}, "codeRef"),
        ({"podLabels": {"team": "x"}}, "podLabels"),
        ({"resources": {"memory": "1Gi"}}, "resources"),
    ],
)
def test_ineligible_jobs_take_the_cold_path(spec: dict[str, Any], reason: str) -> None:
    allowing = TYPE.model_copy(update={"allow_runtime_requirements": True})
    model = PythonJob.model_validate(job(**spec))
    assert reason in (sb.ineligible_reason(model, allowing) or "")
    assert (
        sb.plan_claim(job(**spec), allowing.model_dump(by_alias=True), SETTINGS, standby_pod(), NOW) is None
    )


def test_claim_relabels_owns_bounds_and_preconditions_the_pod() -> None:
    claim = sb.plan_claim(job(timeoutSeconds=10), TYPE_DICT, SETTINGS, standby_pod(), NOW)
    assert claim is not None and claim.pod_name == "tako-standby-fast-aaaa"
    meta = claim.patch["metadata"]
    assert meta["resourceVersion"] == "42"  # optimistic concurrency: a second claimer gets 409
    assert meta["annotations"] == {sb.ANNOTATION_CLAIMED_BY: "job-uid-1"}
    (owner,) = meta["ownerReferences"]  # a merge patch replaces the list: the type no longer owns it
    assert owner["kind"] == "PythonJob" and owner["uid"] == "job-uid-1" and owner["controller"] is True
    assert meta["labels"][builders.LABEL_JOB] == "j1"  # the job's deny-all policy selects it from now on
    # waited 60 s + 1 + startup 120 + timeout 10 + grace 30
    assert claim.patch["spec"] == {"activeDeadlineSeconds": 60 + 1 + 120 + 10 + 30}
    assert claim.body["job_uid"] == "job-uid-1" and claim.body["code"] == "print(1)"
    assert claim.body["input_data"] == {"x": 1}
    cold_config = builders.runner_config(PythonJob.model_validate(job(timeoutSeconds=10)), TYPE, SETTINGS)
    assert claim.body["config"] == cold_config  # same limits as a cold job


def test_claim_refused_when_the_deadline_would_not_shrink() -> None:
    pod = standby_pod()
    pod["status"]["startTime"] = "2025-12-31T12:03:00Z"  # waited 23 h 57 min of its 24 h
    assert sb.plan_claim(job(), TYPE_DICT, SETTINGS, pod, NOW) is None


def test_release_drops_the_standby_labels() -> None:
    patch = sb.release_patch()
    assert patch["metadata"]["labels"] == {sb.LABEL_STANDBY: None, sb.LABEL_POOL: None}
    assert patch["metadata"]["annotations"] == {sb.ANNOTATION_PUSHED: "true"}


def test_push_url_uses_the_pod_ip_and_its_port() -> None:
    assert sb.push_url(standby_pod(), STANDBY) == "http://10.0.0.7:8790/job"
    assert sb.push_url(standby_pod(phase="Pending"), STANDBY) is None


# --- the reconcile plan with a reserved standby Pod ------------------------------------------------


def observed(job_body: dict[str, Any], standby: dict[str, Any] | None) -> Observed:
    return Observed(job=job_body, now=NOW, admitted=True, job_type=TYPE_DICT, standby=standby)


def test_plan_claims_the_reserved_standby_pod_instead_of_creating_one() -> None:
    result = plan(observed(job(), standby_pod()))
    assert result.claim is not None and result.claim.pod_name == "tako-standby-fast-aaaa"
    assert [o["kind"] for o in result.create] == ["NetworkPolicy"]  # the job's deny-all, no new Pod
    assert result.create[0]["spec"]["podSelector"]["matchLabels"] == {builders.LABEL_JOB: "j1"}
    assert result.status["phase"] == "Pending" and result.status["attempts"] == 1
    assert result.status["podName"] == "tako-standby-fast-aaaa"


def test_plan_goes_cold_without_a_standby_or_for_an_ineligible_job() -> None:
    cold = plan(observed(job(), None))
    assert cold.claim is None and cold.create[-1]["kind"] == "Pod"
    assert cold.status["podName"] == objects.pod_name(job(), 1)
    ineligible = plan(observed(job(podLabels={"a": "b"}), standby_pod()))
    assert ineligible.claim is None and ineligible.create[-1]["kind"] == "Pod"


def test_standby_pod_passes_pod_security_restricted() -> None:
    """Job namespaces enforce Pod Security `restricted` (the chart's checker, test_chart_pss.py)."""
    assert restricted_violations(standby_pod()["spec"]) == []
