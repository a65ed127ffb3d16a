"""PythonSessions: pure builders and the per-pass plan, no I/O (docs/sessions.md, "Kubernetes").

A PythonSession becomes two owned objects:
- a NetworkPolicy ``<session>-session`` selecting only the session's Pod: ingress from the shim's Pods
  to the session port, no egress at all;
- a Pod ``<session>-session``, shaped by ``builders.build_pod`` (gVisor RuntimeClass, no service account
  token, non-root, read-only root, every capability dropped, the job type's image and limits) and then
  turned into a session Pod: the session server (``tako_runner/session_server.py``) listens on the
  session port and accepts only the bearer token whose sha256 is ``spec.tokenSha256``. The token itself
  is never in the cluster: shim replicas derive it (HMAC of their shared session key and the session's
  namespace/name), so neither the operator nor anyone who reads Pods or PythonSessions can send code.

The shim delivers code straight to the Pod (status.address) and records each execution on the
PythonSession's annotations (count, last activity) or asks for its end (``takovm.dev/end-requested``);
the operator mirrors them into the status, enforces TTL and idle timeout, deletes the Pod when the
session ends and records why. ``plan_session`` decides one pass; the SessionReconciler carries it out.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.resources
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tako_operator.core import builders
from tako_operator.core import conditions as cond
from tako_operator.core import standby as standby_mod
from tako_operator.core.pods import format_time, parse_time, terminated
from tako_operator.core.status import merge_conditions
from tako_operator.session_settings import SessionSettings
from tako_operator.settings import PodSettings
from tako_runner.outcome import parse_envelope
from tako_vm.models.crd import (
    API_VERSION,
    SESSION_ANNOTATION_END,
    SESSION_ANNOTATION_EXECUTIONS,
    SESSION_ANNOTATION_LAST_ACTIVITY,
    PythonJob,
    PythonJobTypeSpec,
    PythonSession,
    PythonSessionStatus,
)

LABEL_SESSION = "takovm.dev/session"
TOKEN_HASH_ENV = "TAKO_SESSION_TOKEN_SHA256"
PORT_NAME = "session"
EXECUTE_PATH = "/execute"
# Written by the shim (the only fields it writes; the status belongs to the operator):
ANNOTATION_EXECUTIONS = SESSION_ANNOTATION_EXECUTIONS  # cells run so far (the runner's own count)
ANNOTATION_LAST_ACTIVITY = SESSION_ANNOTATION_LAST_ACTIVITY  # RFC 3339, end of the last execution
ANNOTATION_END = SESSION_ANNOTATION_END  # an end reason: deleted, killed_after_timeout
REQUESTABLE_ENDS = frozenset({"deleted", "killed_after_timeout"})
# Ends that need a person's attention (kstatus Stalled=True); deleted / expired / idle are normal ends.
ABNORMAL_ENDS = frozenset({"oom_killed", "killed_after_timeout", "crashed", "start_failed"})
# runner.py: the install init container runs it, and the session server uses its egress probe.
SESSION_FILES = ("runner.py", "session.py", "session_server.py")
EXIT_EGRESS_OPEN = 4  # session_server.py: egress still open after the install; no code was run

PENDING, READY, ENDED = "Pending", "Ready", "Ended"
ENDED_CONDITION = "Ended"


# --- names and shipped files ------------------------------------------------------------------------


def pod_name(name: str) -> str:
    return builders.child_name(name, "session")


def policy_name(name: str) -> str:
    return builders.child_name(name, "session")


def install_policy_name(name: str) -> str:
    return builders.child_name(name, "install-egress")


def install_configmap_name(name: str) -> str:
    """The install step's config (``job.json``); the same name the job Pod builder mounts as /code."""
    return builders.child_name(name, "code")


@cache
def session_sources() -> dict[str, str]:
    files = importlib.resources.files("tako_runner")
    return {name: files.joinpath(name).read_text(encoding="utf-8") for name in SESSION_FILES}


@cache
def session_configmap_name() -> str:
    """Named by content hash (an upgrade never changes what a running session Pod mounts)."""
    digest = hashlib.sha256()
    for name, text in sorted(session_sources().items()):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return f"tako-session-{digest.hexdigest()[:10]}"


def build_session_configmap(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": session_configmap_name(),
            "namespace": namespace,
            "labels": {**builders.COMMON_LABELS, builders.LABEL_COMPONENT: "runner"},
        },
        "immutable": True,
        "data": dict(session_sources()),
    }


def owner_reference(session: PythonSession) -> dict[str, Any]:
    uid = session.metadata.get("uid")
    if not uid:
        raise ValueError(
            f"PythonSession {session.name!r} has no metadata.uid: children need an owner reference"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": "PythonSession",
        "name": session.name,
        "uid": str(uid),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def session_labels(session: PythonSession, component: str) -> dict[str, str]:
    return {
        **builders.COMMON_LABELS,
        builders.LABEL_COMPONENT: component,
        LABEL_SESSION: builders.label_safe(session.name),
    }


def _metadata(session: PythonSession, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": session.namespace,
        "labels": session_labels(session, component),
        "ownerReferences": [owner_reference(session)],
    }


# --- the two objects ------------------------------------------------------------------------------


def build_session_policy(session: PythonSession, sessions: SessionSettings) -> dict[str, Any]:
    """Ingress only from the shim's Pods to the session port; no egress, ever (fail closed: without
    client labels nobody gets in)."""
    ingress: list[dict[str, Any]] = []
    if sessions.client_pod_labels:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(sessions.client_pod_labels)}}
        if sessions.client_namespace:
            peer["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": sessions.client_namespace}
            }
        ingress.append({"from": [peer], "ports": [{"protocol": "TCP", "port": sessions.port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(session, policy_name(session.name), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_SESSION: builders.label_safe(session.name)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [],
        },
    }


def _template_job(session: PythonSession) -> PythonJob:
    """A stand-in PythonJob so the job Pod builder shapes the session Pod (resources and security come
    from the job type and the session's overrides)."""
    spec: dict[str, Any] = {"code": "pass", "jobType": session.spec.job_type}
    if session.spec.requirements:
        spec["requirements"] = list(session.spec.requirements)
    if session.spec.resources is not None:
        spec["resources"] = session.spec.resources.model_dump(exclude_none=True)
    return PythonJob.model_validate(
        {"metadata": {"name": session.name, "namespace": session.namespace, "uid": "session"}, "spec": spec}
    )


def build_install_configmap(
    session: PythonSession, job_type: PythonJobTypeSpec, settings: PodSettings
) -> dict[str, Any]:
    """With requirements: ``<session>-code`` holding the runner's ``job.json`` (requirements, /deps, the
    startup timeout, the egress probe) for the install step and the session server's egress check."""
    configmap = builders.build_code_configmap(_template_job(session), job_type, settings)
    configmap["metadata"] = _metadata(session, install_configmap_name(session.name), "code")
    return configmap


def build_install_policy(session: PythonSession, settings: PodSettings) -> dict[str, Any]:
    """While the session Pod carries ``takovm.dev/egress=install``: the jobs' install egress (DNS and public
    HTTPS only), selecting this session's Pod. The operator removes the label, then this policy, once
    the install container has ended; the session server checks egress is closed before it listens."""
    policy = builders.build_install_egress_policy(_template_job(session), settings)
    policy["metadata"] = _metadata(session, install_policy_name(session.name), "network-policy")
    policy["spec"]["podSelector"] = {
        "matchLabels": {
            LABEL_SESSION: builders.label_safe(session.name),
            builders.LABEL_EGRESS: builders.EGRESS_INSTALL,
        }
    }
    return policy


def build_session_pod(
    session: PythonSession, job_type: PythonJobTypeSpec, settings: PodSettings, sessions: SessionSettings
) -> dict[str, Any]:
    """The session's one gVisor Pod. With requirements, the job Pod's ``install`` init container comes
    first (``runner.py install`` into the /deps emptyDir, with install egress), and the session server
    mounts /deps read-only and waits until egress is closed before it takes code (``--config``)."""
    requirements = bool(session.spec.requirements)
    pod = builders.build_pod(_template_job(session), job_type, settings, attempt=1)
    spec = pod["spec"]
    spec["activeDeadlineSeconds"] = session.spec.ttl_seconds + sessions.deadline_grace_seconds
    kept = ("tmp", "code", "deps") if requirements else ("tmp",)
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] in kept] + [
        {"name": "runner", "configMap": {"name": session_configmap_name(), "defaultMode": 0o444}}
    ]
    (container,) = spec["containers"]
    container["name"] = "session"
    container["command"] = [
        "python3", "-I", f"{builders.RUNNER_DIR}/session_server.py", "--port", str(sessions.port),
        *(["--config", f"{builders.CODE_DIR}/job.json"] if requirements else []),
    ]  # fmt: skip
    container["ports"] = [{"name": PORT_NAME, "containerPort": sessions.port, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "tcpSocket": {"port": sessions.port},
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] in ("runner", *kept)]
    container["env"] = [
        *(e for e in container.get("env", []) if e["name"] != "PYTHONPATH"),
        {"name": "HOME", "value": builders.TMP_DIR},
        {"name": TOKEN_HASH_ENV, "value": session.spec.token_sha256 or ""},
    ]
    pod["metadata"] = _metadata(session, pod_name(session.name), "session")
    if requirements:
        pod["metadata"]["labels"][builders.LABEL_EGRESS] = builders.EGRESS_INSTALL
    return pod


# --- one pass -----------------------------------------------------------------------------------------


@dataclass
class SessionPlan:
    create: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None
    delete_pod: str | None = None
    cleanup: bool = False  # delete the NetworkPolicies and the install ConfigMap (the Pod: delete_pod)
    remove_egress: bool = False  # the install ended well: drop the Pod's egress label and its policy
    delete_session: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None


def session_conditions(phase: str, end_reason: str | None, message: str) -> list[cond.Condition]:
    """kstatus (sigs.k8s.io/cli-utils kstatus, as Flux and Argo CD read it), with observedGeneration on
    each condition and on the status:

    - starting: Ready=False and Reconciling=True -> InProgress;
    - open: Ready=True (``kubectl wait --for=condition=Ready pysession/NAME``), Ended=False -> Current;
    - ended normally (deleted, expired, idle): Ended=True only -> Current: nothing is left to reconcile
      (a Ready=False would read InProgress for ever);
    - ended abnormally (OOM, crash, a cell that ignored its interrupt, a Pod that never started):
      Stalled=True and Ended=True -> Failed.
    Reconciling and Stalled are written only while True; Ready only while the session can still run
    code. ``kubectl wait --for=condition=Ended`` waits for the end, however it ends."""
    if phase == PENDING:
        return [(cond.READY, cond.FALSE, PENDING, message), (cond.RECONCILING, cond.TRUE, PENDING, message)]
    if phase == READY:
        return [(cond.READY, cond.TRUE, READY, message), (ENDED_CONDITION, cond.FALSE, READY, "Running")]
    reason = "".join(part.capitalize() for part in (end_reason or "ended").split("_"))
    out: list[cond.Condition] = []
    if end_reason in ABNORMAL_ENDS:
        out.append((cond.STALLED, cond.TRUE, reason, message))
    out.append((ENDED_CONDITION, cond.TRUE, reason, message))
    return out


def _annotations(session: dict[str, Any]) -> dict[str, str]:
    return dict((session.get("metadata") or {}).get("annotations") or {})


def install_pending(pod: dict[str, Any] | None) -> bool:
    """The Pod still has install egress and its install container has ended: read its log, then close."""
    labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
    return builders.LABEL_EGRESS in labels and terminated(pod or {}, builders.INSTALL_CONTAINER) is not None


def install_end(pod: dict[str, Any], install_log: str | None) -> tuple[str, str] | None:
    """(start_failed, why) when the install step failed (pip, its timeout, the container itself)."""
    state = terminated(pod, builders.INSTALL_CONTAINER)
    if state is None:
        return None
    if state.get("reason") == "OOMKilled":
        return "start_failed", "requirements: the install step ran out of memory (OOM-killed)"
    if state.get("exitCode", 0) != 0:
        return "start_failed", f"requirements: the install container exited with code {state.get('exitCode')}"
    envelope = parse_envelope(install_log or "")
    if envelope is None:
        return "start_failed", "requirements: the install step left no result in its log"
    error = envelope.get("error") or {}
    if error:
        return "start_failed", f"requirements ({error.get('type')}): {error.get('message')}"[:1024]
    return None


def pod_end_reason(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(end reason, message) when the session's Pod has stopped, else None."""
    status = pod.get("status") or {}
    state = terminated(pod, "session")
    if state is not None and state.get("reason") == "OOMKilled":
        return "oom_killed", "The session ran out of memory (its Pod was OOM-killed)"
    if state is not None and state.get("exitCode") == EXIT_EGRESS_OPEN:
        return "start_failed", "Network egress was still open after the install step: no code was run"
    if status.get("reason") == "DeadlineExceeded":
        return "expired", "The session's Pod reached its deadline"
    if status.get("phase") in ("Succeeded", "Failed") or state is not None:
        code = (state or {}).get("exitCode")
        return "crashed", f"The session's Pod stopped (exit code {code})"
    return None


def _ready_address(pod: dict[str, Any] | None, port: int) -> str | None:
    if pod is None or not standby_mod.is_ready(pod):
        return None
    ip = str((pod.get("status") or {}).get("podIP"))
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}"


def plan_session(
    session: dict[str, Any],
    *,
    pod: dict[str, Any] | None,
    job_type: dict[str, Any] | None,
    settings: PodSettings,
    sessions: SessionSettings,
    now: datetime.datetime,
    install_log: str | None = None,
) -> SessionPlan:
    """One pass over one PythonSession: what to create, delete and write. ``install_log``: the install
    container's log, read by the caller when ``install_pending(pod)``."""
    model = PythonSession.model_validate(session)
    meta = model.metadata
    old = model.status or PythonSessionStatus()
    previous = [c.model_dump(mode="json", by_alias=True) for c in old.conditions or []]
    generation = meta.get("generation")
    annotations = _annotations(session)
    created = parse_time(meta.get("creationTimestamp")) or now
    expires = created + datetime.timedelta(seconds=model.spec.ttl_seconds)
    last_activity = parse_time(annotations.get(ANNOTATION_LAST_ACTIVITY)) or created
    executions = _count(annotations.get(ANNOTATION_EXECUTIONS), old.executions or 0)
    name = model.name
    result = SessionPlan()
    fields: dict[str, Any] = {
        "expiresAt": format_time(expires),
        "lastActivityTime": format_time(last_activity),
        "executions": executions,
        "podName": pod_name(name),
    }
    if generation is not None:
        fields["observedGeneration"] = int(generation)

    if old.phase == ENDED:
        ended = old.ended_at or now
        if pod is not None and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            result.delete_pod = pod_name(name)
        result.cleanup = True
        left = (ended + datetime.timedelta(seconds=sessions.retention_seconds) - now).total_seconds()
        if left <= 0:
            result.delete_session = True
        else:
            result.requeue_after = left
        fields = {k: v for k, v in fields.items() if k in ("executions", "observedGeneration")}
        result.status = _changed(session, fields)
        return result

    end: tuple[str, str] | None = None
    requested = annotations.get(ANNOTATION_END)
    type_model: PythonJobTypeSpec | None = None
    if requested in REQUESTABLE_ENDS:
        end = (requested, _REQUESTED_MESSAGES[requested])
    elif now >= expires:
        end = ("expired", f"The session reached its TTL of {model.spec.ttl_seconds} s")
    elif now >= last_activity + datetime.timedelta(seconds=model.spec.idle_timeout_seconds):
        end = ("idle", f"No execution for {model.spec.idle_timeout_seconds} s (idle timeout)")
    elif pod is not None and install_pending(pod) and (failed := install_end(pod, install_log)) is not None:
        end = failed
    elif pod is not None and (stopped := pod_end_reason(pod)) is not None:
        end = stopped
    elif pod is None and old.phase is not None and old.pod_name:
        end = ("crashed", "The session's Pod was deleted")
    elif not model.spec.token_sha256:
        end = (
            "start_failed",
            "spec.tokenSha256 is not set: nobody could send code (create sessions via the shim)",
        )
    elif job_type is None:
        end = ("start_failed", f"PythonJobType {model.spec.job_type_name!r} not found in the namespace")
    else:
        type_model = PythonJobTypeSpec.model_validate(job_type)
        startup = datetime.timedelta(seconds=type_model.startup_timeout_seconds)
        refused = _refused(model, type_model)
        if refused is not None:
            end = ("start_failed", refused)
        elif _ready_address(pod, sessions.port) is None and now >= created + startup:
            end = (
                "start_failed",
                f"The session's Pod was not ready within {type_model.startup_timeout_seconds} s",
            )

    if end is not None:
        reason, message = end
        fields.update(
            phase=ENDED,
            endReason=reason,
            endedAt=format_time(now),
            message=message,
            conditions=merge_conditions(
                session_conditions(ENDED, reason, message), generation, now, previous
            ),
            address=None,
        )
        if pod is not None:
            result.delete_pod = pod_name(name)
        result.cleanup = True
        result.events.append(
            ("Warning" if reason in ABNORMAL_ENDS else "Normal", "Ended", f"{reason}: {message}")
        )
        result.requeue_after = float(sessions.retention_seconds) if sessions.retention_seconds else 0.05
        result.delete_session = sessions.retention_seconds == 0
        result.status = _changed(session, fields)
        return result

    assert type_model is not None
    if pod is None:
        result.create.append(build_session_configmap(model.namespace))
        if model.spec.requirements:
            result.create.append(build_install_configmap(model, type_model, settings))
            result.create.append(build_install_policy(model, settings))
        result.create.append(build_session_policy(model, sessions))
        result.create.append(build_session_pod(model, type_model, settings, sessions))
    elif install_pending(pod):
        result.remove_egress = True
        result.events.append(("Normal", "EgressClosed", "requirements installed; install egress removed"))
    address = _ready_address(pod, sessions.port)
    phase = READY if address else PENDING
    message = "Ready for code" if address else "Waiting for the session's Pod"
    fields.update(
        phase=phase,
        address=address,
        message=message,
        conditions=merge_conditions(session_conditions(phase, None, message), generation, now, previous),
    )
    if phase == READY and old.phase != READY:
        result.events.append(("Normal", "Ready", f"Session Pod {pod_name(name)} is ready at {address}"))
    deadlines = [expires, last_activity + datetime.timedelta(seconds=model.spec.idle_timeout_seconds)]
    if phase == PENDING:
        deadlines.append(created + datetime.timedelta(seconds=type_model.startup_timeout_seconds))
    result.requeue_after = max(0.05, min((d - now).total_seconds() for d in deadlines) + 0.05)
    result.status = _changed(session, fields)
    return result


_REQUESTED_MESSAGES = {
    "deleted": "Ended by DELETE /sessions/{id}",
    "killed_after_timeout": "A cell ignored its timeout interrupt for the grace period: killed",
}


def _refused(session: PythonSession, job_type: PythonJobTypeSpec) -> str | None:
    """Why the builders cannot make this session's Pod (a job type without runtime requirements)."""
    try:
        builders.check_requirements_allowed(_template_job(session), job_type)
    except builders.JobRejected as exc:
        return str(exc)
    return None


def _count(raw: str | None, fallback: int) -> int:
    try:
        return max(int(raw or ""), fallback)
    except ValueError:
        return fallback


def _changed(session: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any] | None:
    """The fields that differ from the stored status (None: nothing to write), checked against the
    shared PythonSessionStatus model (what the CRD's schema accepts)."""
    old = session.get("status") or {}
    PythonSessionStatus.model_validate({k: v for k, v in fields.items() if v is not None})
    delta = {k: v for k, v in fields.items() if old.get(k) != v}
    return delta or None
