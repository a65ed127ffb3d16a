"""The operator's decision function: observed state in, a plan of actions out (pure, no I/O).

`plan(observed)` is idempotent: called again on the state its own plan produced, it asks for
nothing new. The handlers (handlers.py) gather the observed state, call `plan`, and carry out the
plan through kube.py. Neither kopf nor the Kubernetes client is imported here.

Phases: Queued -> Pending -> Running -> Succeeded | Failed | Timeout | OOM | Cancelled.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from tako_operator.core import builders, objects, webhooks
from tako_operator.core import standby as standby_mod
from tako_operator.core import status as status_mod
from tako_operator.core.builders import JobRejected
from tako_operator.core.conditions import TERMINAL_PHASES
from tako_operator.core.pods import (
    container_status,
    format_time_precise,
    parse_time,
    pod_finished,
    terminated,
)
from tako_operator.settings import Limits, PodSettings
from tako_vm.models.crd import PythonJob

JOB_CONTAINER = "job"
INSTALL_CONTAINER = "install"
EGRESS_LABEL = "takovm.dev/egress"
# Retry schedule, kept on the PythonJob (metadata, so the status schema stays the CRD's own).
RETRY_AT = "takovm.dev/retry-at"
RETRY_ATTEMPT = "takovm.dev/retry-attempt"

# Pod-level signals that the infrastructure, not the user's code, ended the attempt.
INFRA_POD_REASONS = frozenset({"Evicted", "NodeLost", "Preempting", "Shutdown", "Terminated", "NodeShutdown"})
# Container waiting reasons that mean the image cannot be pulled.
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
PERMANENT_IMAGE_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})

MAX_MESSAGE_CHARS = 1024
# A finished job past its TTL whose completion webhook is still being retried is looked at again this often.
WEBHOOK_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class Observed:
    job: dict[str, Any]
    now: datetime.datetime
    admitted: bool
    # The resolved job type spec (built-in default when the job names none); None when the job
    # names a type that does not exist.
    job_type: dict[str, Any] | None
    pod: dict[str, Any] | None = None
    logs: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    settings: PodSettings = field(default_factory=PodSettings)
    # A ready standby Pod of the job's type reserved for this job (None: none, or the pool is off).
    standby: dict[str, Any] | None = None


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)
    create: list[dict[str, Any]] = field(default_factory=list)  # in order; the Pod comes last
    delete_pod: str | None = None
    remove_egress: bool = False  # drop the install egress label and the install policy
    cleanup: bool = False  # delete the job's ConfigMaps and policies (finished)
    delete_job: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    annotations: dict[str, str | None] = field(default_factory=dict)  # PythonJob metadata patch
    requeue_after: float | None = None
    released: bool = False  # the job stopped holding an admission slot
    claim: standby_mod.Claim | None = None  # run attempt 1 in this standby Pod instead of a new one


# ---------------------------------------------------------------------------------------------
# small readers over plain dicts


def waiting_reason(pod: dict[str, Any]) -> tuple[str, str] | None:
    for name in (INSTALL_CONTAINER, JOB_CONTAINER):
        entry = container_status(pod, name)
        waiting = ((entry or {}).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    return None


def logs_needed(pod: dict[str, Any] | None, cancel: bool = False) -> list[str]:
    """Which container logs `plan` needs for this Pod: those of containers that have terminated, once
    the job is over in it (or is being cancelled)."""
    if pod is None:
        return []
    over = cancel or pod_finished(pod) or terminated(pod, INSTALL_CONTAINER) is not None
    if not over:
        return []
    names = [n for n in (INSTALL_CONTAINER, JOB_CONTAINER) if terminated(pod, n) is not None]
    if cancel and JOB_CONTAINER not in names:
        names.append(JOB_CONTAINER)
    return names


def job_key(job: dict[str, Any]) -> tuple[str, str]:
    meta = job["metadata"]
    return str(meta.get("namespace", "")), str(meta["name"])


def timeout_seconds(job: dict[str, Any], job_type: dict[str, Any] | None) -> int:
    spec = job.get("spec") or {}
    return int(spec.get("timeoutSeconds") or (job_type or {}).get("timeoutSeconds") or 30)


def startup_timeout_seconds(job: dict[str, Any], job_type: dict[str, Any] | None) -> int:
    spec = job.get("spec") or {}
    return int(spec.get("startupTimeoutSeconds") or (job_type or {}).get("startupTimeoutSeconds") or 120)


def backoff_seconds(attempt: int, limits: Limits) -> float:
    """Exponential backoff before attempt `attempt + 1` (attempt counts from 1)."""
    return float(
        min(limits.retry_backoff_seconds * (2 ** max(attempt - 1, 0)), limits.retry_backoff_max_seconds)
    )


# ---------------------------------------------------------------------------------------------
# status records (built by status.py; the operator adds the fields it owns)


def _model(observed: Observed) -> PythonJob:
    return objects.job_model(observed.job)


def failed_status(observed: Observed, error_type: str, message: str, phase: str = "Failed") -> dict[str, Any]:
    """A terminal record for a failure the operator detected itself (no runner envelope)."""
    model = _model(observed)
    error = {"type": error_type, "message": message[:4096], "phase": "startup"}
    text = f"{error_type}: {message}"[:MAX_MESSAGE_CHARS]
    previous = (observed.job.get("status") or {}).get("conditions") or []
    generation = model.metadata.get("generation")
    fields: dict[str, Any] = {
        "phase": phase,
        "error": error,
        "message": text,
        "finishedAt": status_mod.format_time(observed.now),
        "conditions": status_mod.conditions_for(phase, text, generation, observed.now, previous),
    }
    if generation is not None:
        fields["observedGeneration"] = int(generation)
    return fields


def _events_for_finish(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    phase = record.get("phase", "")
    kind = "Normal" if phase == "Succeeded" else "Warning"
    return [(kind, phase, str(record.get("message") or phase))]


def _finish(observed: Observed, result: Plan, record: dict[str, Any]) -> Plan:
    result.status = record
    result.cleanup = True
    result.released = True
    if observed.pod is not None:
        result.delete_pod = observed.pod["metadata"]["name"]
    result.events.extend(_events_for_finish(record))
    return result


def _deadline_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """The Pod as the kubelet reports it after activeDeadlineSeconds (used for the operator's bound)."""
    copy = {**pod, "status": {**(pod.get("status") or {}), "phase": "Failed", "reason": "DeadlineExceeded"}}
    return copy


# ---------------------------------------------------------------------------------------------
# the plan


def plan(observed: Observed) -> Plan:
    """The plan for `observed`. Every status it writes is checked against the shared PythonJobStatus
    model, and a pass that changes nothing else still records an unobserved generation (a spec change,
    also on a finished job, is always observed)."""
    result = _plan(observed)
    if result.status:
        result.status = status_mod.validated(result.status)
    else:
        result.status = status_mod.observe_generation(observed.job)
    return result


def _plan(observed: Observed) -> Plan:
    job = observed.job
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    phase = status.get("phase") or ""
    now = observed.now
    limits = observed.limits
    settings = observed.settings
    result = Plan()

    # 1. Finished: clean up leftovers and delete the job after its TTL.
    if phase in TERMINAL_PHASES:
        if observed.pod is not None:
            result.delete_pod = observed.pod["metadata"]["name"]
        ttl = spec.get("ttlSecondsAfterFinished", limits.default_ttl_seconds)
        finished_at = parse_time(status.get("finishedAt"))
        if ttl is not None and finished_at is not None:
            remaining = (finished_at - now).total_seconds() + float(ttl)
            if remaining > 0:
                result.requeue_after = remaining
            elif webhooks.is_open(job):  # kept until its completion webhook is delivered or failed
                result.requeue_after = WEBHOOK_HOLD_SECONDS
            else:
                result.delete_job = True
        return result

    model = _model(observed)
    pod = observed.pod

    # 2. Cancelled (the spec's switch): stop whatever runs, record it.
    if spec.get("cancel"):
        if pod is None:
            return _finish(observed, result, status_mod.cancelled_before_start(model, now))
        return _finish(observed, result, status_mod.compute_status(model, pod, observed.logs, now, settings))

    # 3. Unknown job type: nothing can run; say which type is missing.
    if observed.job_type is None:
        name = objects.job_type_name(job)
        message = f"spec.jobType: PythonJobType {name!r} not found in namespace {model.namespace!r}"
        return _finish(observed, result, status_mod.rejected_status(model, message, now))

    attempts = int(status.get("attempts") or 0)

    # 4. Not admitted yet: Queued, in creation order (the caller decides admission). A job that
    # has had an attempt keeps its slot, whatever a stale admission view says.
    if not observed.admitted and attempts == 0:
        if phase != "Queued":
            result.status = status_mod.queued_status(model, now)
            result.events.append(("Normal", "Queued", result.status["message"]))
        return result

    # 5. Admitted and no Pod: create the first attempt, or retry after an infrastructure loss.
    if pod is None:
        if attempts == 0:
            if observed.standby is not None and _claim_attempt(observed, result):
                return result
            return _create_attempt(observed, result, 1)
        return _retry_or_fail(observed, result, attempts, "the pod disappeared before the job finished")

    # 6. The Pod exists: follow it (attempt 1 may exist before its status write landed).
    attempts = max(attempts, 1)
    pod_status = pod.get("status") or {}
    reason = pod_status.get("reason") or ""
    if reason in INFRA_POD_REASONS or pod_status.get("phase") == "Unknown":
        result.delete_pod = pod["metadata"]["name"]
        return _retry_or_fail(
            observed, result, attempts, f"pod ended by the infrastructure ({reason or 'Unknown'})"
        )
    if pod_finished(pod) or _install_failed(pod):
        record = status_mod.compute_status(model, _as_finished(pod), observed.logs, now, settings)
        if not status.get("attempts"):  # the Pod's own status write was lost (an operator restart)
            record["attempts"] = attempts
        return _finish(observed, result, record)

    # Still running. Install finished -> close egress before user code may start.
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if EGRESS_LABEL in labels and terminated(pod, INSTALL_CONTAINER) is not None:
        result.remove_egress = True
        result.events.append(("Normal", "EgressClosed", "install finished; install egress removed"))

    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or now
    age = (now - created).total_seconds()
    startup = startup_timeout_seconds(job, observed.job_type)
    pull = waiting_reason(pod)
    if pull is not None and (pull[0] in PERMANENT_IMAGE_REASONS or age > startup):
        record = failed_status(observed, "image_pull_error", f"{pull[0]}: {pull[1]}".strip(": "))
        return _finish(observed, result, record)

    # Operator-side bound, in case both the runner deadline and activeDeadlineSeconds fail: the Pod's
    # own activeDeadlineSeconds (one knob, settings.deadline_grace_seconds, moves both).
    bound = startup + timeout_seconds(job, observed.job_type) + settings.deadline_grace_seconds
    if age > bound:
        record = status_mod.compute_status(model, _deadline_pod(pod), observed.logs, now, settings)
        return _finish(observed, result, record)

    wanted = status_mod.compute_status(model, pod, {}, now, settings)
    wanted["attempts"] = attempts
    if pull is not None:
        wanted["message"] = f"{pull[0]}: {pull[1]}"[:MAX_MESSAGE_CHARS]
    if status_mod.status_changed(status, wanted):
        result.status = wanted
        if wanted.get("phase") != phase:
            result.events.append(
                ("Normal", str(wanted.get("phase")), f"attempt {attempts}: {wanted['message']}")
            )
    result.requeue_after = max(0.5, min(bound - age + 0.1, 30.0))
    return result


def _install_failed(pod: dict[str, Any]) -> bool:
    install = terminated(pod, INSTALL_CONTAINER)
    return install is not None and install.get("exitCode", 0) != 0


def _as_finished(pod: dict[str, Any]) -> dict[str, Any]:
    """A failed install ends the Pod (restartPolicy Never): report it as finished even if the kubelet
    has not flipped the phase yet."""
    if _install_failed(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        return {**pod, "status": {**(pod.get("status") or {}), "phase": "Failed"}}
    return pod


def _create_attempt(observed: Observed, result: Plan, attempt: int) -> Plan:
    """Build everything attempt `attempt` needs; a job the builders reject fails with their reason."""
    assert observed.job_type is not None
    try:
        result.create = objects.attempt_objects(observed.job, observed.job_type, observed.settings, attempt)
    except JobRejected as exc:
        return _finish(observed, result, status_mod.rejected_status(_model(observed), exc, observed.now))
    pod = result.create[-1]
    # the status the next pass computes from this Pod as created, so that pass writes nothing
    result.status = _pending_record(observed, attempt, pod["metadata"]["name"], None, pod)
    result.events.append(("Normal", "Admitted" if attempt == 1 else "Retried", f"attempt {attempt} started"))
    return result


def _claim_attempt(observed: Observed, result: Plan) -> bool:
    """Attempt 1 in the reserved standby Pod: the job's deny-all policy first, then the claim (carried
    out by the handlers). False when the job must take the cold path instead."""
    assert observed.job_type is not None and observed.standby is not None
    try:
        claim = standby_mod.plan_claim(
            observed.job, observed.job_type, observed.settings, observed.standby, observed.now
        )
    except JobRejected:
        return False  # the cold path rejects it with the builders' reason
    if claim is None:
        return False
    result.claim = claim
    result.create = [builders.build_deny_all_policy(_model(observed))]
    message = f"attempt 1: standby pod {claim.pod_name} claimed"
    result.status = _pending_record(observed, 1, claim.pod_name, message)
    result.events.append(("Normal", "Admitted", f"attempt 1 started in standby pod {claim.pod_name}"))
    return True


def _pending_record(
    observed: Observed, attempt: int, pod_name: str, message: str | None, pod: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The status of a job whose attempt `attempt` just got its Pod (`pod`: as it is being created)."""
    model = _model(observed)
    record = status_mod.compute_status(model, pod, {}, observed.now, observed.settings)
    record.update(phase="Pending", attempts=attempt, podName=pod_name)
    if message is not None:
        record["message"] = message
    status = observed.job.get("status") or {}
    if not status.get("queuedAt"):
        record["queuedAt"] = status_mod.format_time(observed.now)
    record["conditions"] = status_mod.conditions_for(
        "Pending",
        record["message"],
        model.metadata.get("generation"),
        observed.now,
        status.get("conditions") or [],
    )
    return record


def _retry_or_fail(observed: Observed, result: Plan, attempts: int, why: str) -> Plan:
    """Infrastructure failures are retried with backoff up to max_attempts; then the job fails."""
    limits = observed.limits
    if attempts >= limits.max_attempts:
        record = failed_status(observed, "infrastructure_error", f"{why}; gave up after {attempts} attempts")
        return _finish(observed, result, record)
    annotations = (observed.job.get("metadata") or {}).get("annotations") or {}
    retry_at = parse_time(annotations.get(RETRY_AT))
    if retry_at is None or annotations.get(RETRY_ATTEMPT) != str(attempts + 1):
        delay = backoff_seconds(attempts, limits)
        result.annotations = {
            RETRY_AT: format_time_precise(observed.now + datetime.timedelta(seconds=delay)),
            RETRY_ATTEMPT: str(attempts + 1),
        }
        message = f"{why}; retrying as attempt {attempts + 1} in {delay:g}s"
        model = _model(observed)
        status = observed.job.get("status") or {}
        result.status = {
            "phase": "Pending",
            "message": message[:MAX_MESSAGE_CHARS],
            "attempts": attempts,
            "conditions": status_mod.conditions_for(
                "Pending",
                message,
                model.metadata.get("generation"),
                observed.now,
                status.get("conditions") or [],
            ),
        }
        result.events.append(("Warning", "Retrying", message))
        result.requeue_after = delay
        return result
    wait = (retry_at - observed.now).total_seconds()
    if wait > 0:
        result.requeue_after = wait
        return result
    return _create_attempt(observed, result, attempts + 1)
