"""Standby job Pods (the cluster warm pool): pure builders and decisions, no I/O.

A standby Pod is a job Pod built by ``builders.build_pod`` for a job type, with the runner started in
standby mode (``tako_runner/standby.py``): it listens on one port for exactly one authenticated push of
code + input + per-job config, then runs that job like any job Pod. The operator claims a ready standby
Pod for an eligible job (a merge patch with a resourceVersion precondition that labels it for the job
and makes the PythonJob its controller), pushes the job, then removes the standby label so only the
job's deny-all NetworkPolicy selects the Pod. See docs/performance.md ("The same idea in a cluster").

Network: the per-namespace standby policy selects ``takovm.dev/standby=waiting`` Pods, allows ingress
only from the operator's Pods to the standby port, and allows no egress at all.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.resources
import json
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tako_operator.core import builders
from tako_operator.core.pods import parse_time
from tako_operator.settings import PodSettings, StandbySettings
from tako_vm.models.crd import API_VERSION, PythonJob, PythonJobTypeSpec

LABEL_STANDBY = "takovm.dev/standby"
STANDBY_WAITING = "waiting"
LABEL_POOL = "takovm.dev/pool"  # the job type's name (label-safe)
ANNOTATION_CLAIMED_BY = "takovm.dev/claimed-by"  # the PythonJob's uid
ANNOTATION_PUSHED = "takovm.dev/pushed"  # "true" once the job was handed over
ANNOTATION_SPEC = "takovm.dev/standby-spec"  # hash of what the Pod was built from
TOKEN_ENV = "TAKO_STANDBY_TOKEN"
PORT_NAME = "standby"
PUSH_PATH = "/job"
MAX_POOL_SIZE = 20  # per (namespace, job type); the CRD's bound on spec.standbyPods


# --- names and shipped files ------------------------------------------------------------------------


@cache
def standby_source() -> str:
    return importlib.resources.files("tako_runner").joinpath("standby.py").read_text(encoding="utf-8")


@cache
def standby_configmap_name() -> str:
    """Named by content hash, like the runner ConfigMap (an upgrade never changes a waiting Pod)."""
    return f"tako-standby-{hashlib.sha256(standby_source().encode()).hexdigest()[:10]}"


def standby_policy_name() -> str:
    return "tako-standby-ingress"


def standby_pod_prefix(type_name: str) -> str:
    return f"tako-standby-{builders.label_safe(type_name)[:40].rstrip('-_.')}-"


def build_standby_configmap(namespace: str) -> dict[str, Any]:
    source = standby_source()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": standby_configmap_name(),
            "namespace": namespace,
            "labels": {**builders.COMMON_LABELS, builders.LABEL_COMPONENT: "runner"},
            "annotations": {builders.ANNOTATION_RUNNER_SHA: hashlib.sha256(source.encode()).hexdigest()},
        },
        "immutable": True,
        "data": {"standby.py": source},
    }


def build_standby_policy(namespace: str, standby: StandbySettings) -> dict[str, Any]:
    """Ingress only from the operator's Pods to the standby port; no egress, ever."""
    ingress: list[dict[str, Any]] = []
    if standby.operator_pod_labels:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(standby.operator_pod_labels)}}
        if standby.operator_namespace:
            peer["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": standby.operator_namespace}
            }
        ingress.append({"from": [peer], "ports": [{"protocol": "TCP", "port": standby.port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": standby_policy_name(),
            "namespace": namespace,
            "labels": {**builders.COMMON_LABELS, builders.LABEL_COMPONENT: "network-policy"},
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_STANDBY: STANDBY_WAITING}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [],
        },
    }


# --- the standby Pod --------------------------------------------------------------------------------


def _template_job(namespace: str, type_name: str) -> PythonJob:
    """A stand-in PythonJob so the job Pod builder shapes the standby Pod (its name, uid and code are
    replaced or dropped below; resources, timeouts and security come from the job type)."""
    return PythonJob.model_validate(
        {
            "metadata": {"name": "standby", "namespace": namespace, "uid": "standby"},
            "spec": {"code": "pass", "jobType": type_name},
        }
    )


def _standby_shape(
    namespace: str,
    type_name: str,
    job_type: PythonJobTypeSpec,
    settings: PodSettings,
    standby: StandbySettings,
) -> dict[str, Any]:
    """The standby Pod without its name, token, owner and spec hash (what the hash covers)."""
    pod = builders.build_pod(_template_job(namespace, type_name), job_type, settings, attempt=1)
    spec = pod["spec"]
    spec["activeDeadlineSeconds"] = standby.max_age_seconds
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in ("runner", "code", "input")] + [
        {
            "name": "runner",
            "projected": {
                "sources": [
                    {"configMap": {"name": builders.runner_configmap_name()}},
                    {"configMap": {"name": standby_configmap_name()}},
                ],
                "defaultMode": 0o444,
            },
        },
        {"name": "code", "emptyDir": {"sizeLimit": "2Mi"}},
        {"name": "input", "emptyDir": {"sizeLimit": "2Mi"}},
    ]
    (container,) = spec["containers"]
    container["command"] = [
        "python3", "-I", f"{builders.RUNNER_DIR}/standby.py", "--port", str(standby.port),
    ]  # fmt: skip
    container["ports"] = [{"name": PORT_NAME, "containerPort": standby.port, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "tcpSocket": {"port": standby.port},
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    for mount in container["volumeMounts"]:
        if mount["name"] in ("code", "input"):
            mount["readOnly"] = False  # the runner writes the pushed job here, then makes it 0444/0555
    labels = {
        **builders.COMMON_LABELS,
        builders.LABEL_COMPONENT: "standby",
        builders.LABEL_JOB_TYPE: builders.label_safe(type_name),
        LABEL_POOL: builders.label_safe(type_name),
        LABEL_STANDBY: STANDBY_WAITING,
    }
    pod["metadata"] = {"namespace": namespace, "labels": labels}
    return pod


def spec_hash(
    namespace: str,
    type_name: str,
    job_type: PythonJobTypeSpec,
    settings: PodSettings,
    standby: StandbySettings,
) -> str:
    """Changes whenever the job type, the settings or the runner would build a different Pod."""
    shape = _standby_shape(namespace, type_name, job_type, settings, standby)
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def build_standby_pod(
    namespace: str,
    type_name: str,
    job_type: PythonJobTypeSpec,
    settings: PodSettings,
    standby: StandbySettings,
    *,
    token: str,
    suffix: str,
    type_uid: str | None = None,
) -> dict[str, Any]:
    """One standby Pod. ``token`` and ``suffix`` are random (chosen by the caller: this module is pure).
    With ``type_uid`` the PythonJobType owns the Pod (non-controller), so deleting the type drains it."""
    if len(token) < 16:
        raise ValueError("the standby token must be at least 16 characters")
    pod = _standby_shape(namespace, type_name, job_type, settings, standby)
    pod["metadata"]["name"] = f"{standby_pod_prefix(type_name)}{suffix}"
    pod["metadata"]["annotations"] = {
        ANNOTATION_SPEC: spec_hash(namespace, type_name, job_type, settings, standby)
    }
    if type_uid:
        pod["metadata"]["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": "PythonJobType", "name": type_name, "uid": type_uid}
        ]
    (container,) = pod["spec"]["containers"]
    container["env"] = [*container.get("env", []), {"name": TOKEN_ENV, "value": token}]
    return pod


# --- readers over observed Pods ---------------------------------------------------------------------


def _meta(pod: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = pod.get("metadata") or {}
    return meta


def is_standby(pod: dict[str, Any]) -> bool:
    return LABEL_POOL in (_meta(pod).get("labels") or {})


def claimed_by(pod: dict[str, Any]) -> str | None:
    value = (_meta(pod).get("annotations") or {}).get(ANNOTATION_CLAIMED_BY)
    return str(value) if value else None


def pushed(pod: dict[str, Any]) -> bool:
    return (_meta(pod).get("annotations") or {}).get(ANNOTATION_PUSHED) == "true"


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return status.get("phase") == "Running" and ready and bool(status.get("podIP"))


def is_live(pod: dict[str, Any]) -> bool:
    """Waiting or about to: not claimed, not being deleted, not finished."""
    phase = (pod.get("status") or {}).get("phase")
    return (
        claimed_by(pod) is None
        and not _meta(pod).get("deletionTimestamp")
        and phase not in ("Succeeded", "Failed", "Unknown")
    )


def pod_token(pod: dict[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for var in container.get("env") or []:
            if var.get("name") == TOKEN_ENV:
                return str(var.get("value") or "") or None
    return None


def push_url(pod: dict[str, Any], standby: StandbySettings) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    port = standby.port
    for container in (pod.get("spec") or {}).get("containers") or []:
        for entry in container.get("ports") or []:
            if entry.get("name") == PORT_NAME:
                port = int(entry["containerPort"])
    return f"http://{host}:{port}{PUSH_PATH}"


# --- the pool ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPlan:
    create: int = 0
    delete: list[str] = field(default_factory=list)


def pool_plan(wanted: int, pods: list[dict[str, Any]], current_hash: str) -> PoolPlan:
    """Make the live, current standby Pods of one (namespace, job type) number ``wanted``.

    Finished or stale (built from an older job type) unclaimed Pods are deleted; claimed Pods belong to
    their job and are never touched here. Surplus Pods go newest first (the oldest are the warmest)."""
    delete: list[str] = []
    keep: list[dict[str, Any]] = []
    for pod in pods:
        if claimed_by(pod) is not None or _meta(pod).get("deletionTimestamp"):
            continue
        stale = (_meta(pod).get("annotations") or {}).get(ANNOTATION_SPEC) != current_hash
        if stale or not is_live(pod):
            delete.append(_meta(pod)["name"])
        else:
            keep.append(pod)
    keep.sort(key=lambda p: (str(_meta(p).get("creationTimestamp") or ""), str(_meta(p)["name"])))
    wanted = max(0, min(wanted, MAX_POOL_SIZE))
    delete.extend(str(_meta(p)["name"]) for p in keep[wanted:])
    return PoolPlan(create=max(0, wanted - len(keep)), delete=delete)


def choose(
    pods: list[dict[str, Any]], current_hash: str, exclude: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """The oldest ready, unclaimed, current standby Pod, or None."""
    ready = [
        p
        for p in pods
        if is_live(p)
        and is_ready(p)
        and (_meta(p).get("annotations") or {}).get(ANNOTATION_SPEC) == current_hash
        and _meta(p).get("name") not in exclude
    ]
    ready.sort(key=lambda p: (str(_meta(p).get("creationTimestamp") or ""), str(_meta(p)["name"])))
    return ready[0] if ready else None


# --- claiming ---------------------------------------------------------------------------------------


def ineligible_reason(job: PythonJob, job_type: PythonJobTypeSpec) -> str | None:
    """Why ``job`` must take the cold path (None = a standby Pod of its type can run it)."""
    if job.spec.requirements:
        return "the job installs requirements (its Pod needs the install phase and its egress)"
    if job.spec.code_ref is not None or job.spec.code is None:
        return "the code comes from spec.codeRef (a ConfigMap volume)"
    if job.spec.pod_labels:
        return "the job sets spec.podLabels"
    override = job.spec.resources
    if override is not None and (
        (override.memory and override.memory != job_type.resources.memory)
        or (override.cpu and override.cpu != job_type.resources.cpu)
    ):
        return "the job overrides the job type's resources"
    return None


def _started(pod: dict[str, Any]) -> datetime.datetime | None:
    return parse_time((pod.get("status") or {}).get("startTime") or _meta(pod).get("creationTimestamp"))


def claimed_deadline(
    job: PythonJob,
    job_type: PythonJobTypeSpec,
    settings: PodSettings,
    pod: dict[str, Any],
    now: datetime.datetime,
) -> int | None:
    """The Pod's new activeDeadlineSeconds (counted from its start): the time it already waited plus the
    job's own deadline. None when that would not be lower than the standby deadline (the API server only
    lets it shrink), so the job goes cold."""
    started = _started(pod)
    if started is None:
        return None
    waited = max(0, math.ceil((now - started).total_seconds()))
    deadline = waited + 1 + builders.active_deadline_seconds(job, job_type, settings)
    current = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    if current is not None and deadline >= int(current):
        return None
    return deadline


def claim_patch(job: PythonJob, pod: dict[str, Any], deadline: int) -> dict[str, Any]:
    """Merge patch that makes the standby Pod the job's attempt-1 Pod. It keeps the standby label (the
    push must still get through) and carries the resourceVersion it was read at: two claimers of one Pod
    cannot both succeed (the API server answers 409 to the second)."""
    meta = _meta(pod)
    labels = {
        **builders.job_labels(job),
        builders.LABEL_COMPONENT: "job",
        builders.LABEL_ATTEMPT: "1",
    }
    patch_meta: dict[str, Any] = {
        "labels": labels,
        "annotations": {ANNOTATION_CLAIMED_BY: str(job.metadata.get("uid") or "")},
        "ownerReferences": [builders.owner_reference(job)],
    }
    if meta.get("resourceVersion"):
        patch_meta["resourceVersion"] = meta["resourceVersion"]
    return {"metadata": patch_meta, "spec": {"activeDeadlineSeconds": deadline}}


def release_patch() -> dict[str, Any]:
    """After the push: drop the standby and pool labels, so the standby policy (ingress from the
    operator) no longer selects the Pod and only the job's deny-all policy does."""
    return {
        "metadata": {
            "labels": {LABEL_STANDBY: None, LABEL_POOL: None},
            "annotations": {ANNOTATION_PUSHED: "true"},
        }
    }


def push_body(job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings) -> dict[str, Any]:
    """What the standby runner receives: the same runner config a cold job gets in /code/job.json."""
    return {
        "job_uid": str(job.metadata.get("uid") or ""),
        "code": job.spec.code or "",
        "input_data": job.spec.input_data or {},
        "config": builders.runner_config(job, job_type, settings),
    }


@dataclass(frozen=True)
class Claim:
    """Everything the operator does to hand one job to one standby Pod (see `plan_claim`)."""

    pod_name: str
    patch: dict[str, Any]  # claim_patch: labels, owner, deadline, resourceVersion precondition
    body: dict[str, Any]  # push_body


def plan_claim(
    job: dict[str, Any],
    job_type: dict[str, Any],
    settings: PodSettings,
    pod: dict[str, Any],
    now: datetime.datetime,
) -> Claim | None:
    """The claim of ``pod`` for ``job``, or None when the job must take the cold path (ineligible, or
    its deadline does not fit the Pod's). Raises builders.JobRejected like the cold builders would."""
    model = PythonJob.model_validate(job)
    type_model = PythonJobTypeSpec.model_validate(job_type)
    if ineligible_reason(model, type_model) is not None:
        return None
    deadline = claimed_deadline(model, type_model, settings, pod, now)
    if deadline is None:
        return None
    return Claim(
        pod_name=str(_meta(pod)["name"]),
        patch=claim_patch(model, pod, deadline),
        body=push_body(model, type_model, settings),
    )
