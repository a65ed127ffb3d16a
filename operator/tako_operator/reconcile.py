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

from tako_runner.outcome import classify

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Timeout", "OOM", "Cancelled"})
ACTIVE_PHASES = frozenset({"Pending", "Running"})
PHASE_BY_OUTCOME = {
    "succeeded": "Succeeded",
    "failed": "Failed",
    "timeout": "Timeout",
    "oom": "OOM",
    "cancelled": "Cancelled",
}

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

MAX_STREAM_CHARS = 16384  # status.stdout / status.stderr bound in the CRD
MAX_MESSAGE_CHARS = 1024


@dataclass(frozen=True)
class Limits:
    """Operator-wide knobs that shape decisions (subset of the operator settings)."""

    max_attempts: int = 3
    retry_backoff_seconds: float = 5.0
    retry_backoff_max_seconds: float = 300.0
    deadline_grace_seconds: float = 30.0
    default_ttl_seconds: int | None = 3600


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


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)
    create_attempt: int | None = None  # create ConfigMaps, policies and the Pod for this attempt
    delete_pod: str | None = None
    remove_egress: bool = False  # drop the install egress label and the install policy
    cleanup: bool = False  # delete the job's ConfigMaps and policies (finished)
    delete_job: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    annotations: dict[str, str | None] = field(default_factory=dict)  # PythonJob metadata patch
    requeue_after: float | None = None
    released: bool = False  # the job stopped holding an admission slot


# ---------------------------------------------------------------------------------------------
# small readers over plain dicts


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for entry in status.get(key) or []:
            if entry.get("name") == name:
                found: dict[str, Any] = entry
                return found
    return None


def terminated(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    entry = container_status(pod, name)
    if entry is None:
        return None
    state = (entry.get("state") or {}).get("terminated")
    return state if isinstance(state, dict) else None


def waiting_reason(pod: dict[str, Any]) -> tuple[str, str] | None:
    for name in (INSTALL_CONTAINER, JOB_CONTAINER):
        entry = container_status(pod, name)
        waiting = ((entry or {}).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    return None


def logs_needed(pod: dict[str, Any] | None) -> list[str]:
    """Which container logs `plan` needs for this Pod (only once the job has finished in it)."""
    if pod is None or pod_finished(pod) is None:
        return []
    names = [JOB_CONTAINER]
    if terminated(pod, INSTALL_CONTAINER) is not None:
        names.insert(0, INSTALL_CONTAINER)
    return names


def pod_finished(pod: dict[str, Any]) -> str | None:
    """'container' when the job container (or a failed install) terminated; 'infra' when the
    infrastructure ended the Pod; 'deadline' on activeDeadlineSeconds; None while it runs."""
    status = pod.get("status") or {}
    reason = status.get("reason") or ""
    if reason == "DeadlineExceeded":
        return "deadline"
    if reason in INFRA_POD_REASONS or status.get("phase") == "Unknown":
        return "infra"
    if terminated(pod, JOB_CONTAINER) is not None:
        return "container"
    install = terminated(pod, INSTALL_CONTAINER)
    if install is not None and install.get("exitCode", 0) != 0:
        return "container"
    if status.get("phase") in ("Succeeded", "Failed"):
        return "container"
    return None


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
# the terminal record


def _clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    notice = f"\n[TRUNCATED {len(text) - limit} chars]"
    return text[: limit - len(notice)] + notice, True


def outcome_status(outcome: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """Map a `tako_runner.outcome.Outcome` dict to the CRD's status fields."""
    stdout, out_cut = _clip(outcome.get("stdout") or "", MAX_STREAM_CHARS)
    stderr, err_cut = _clip(outcome.get("stderr") or "", MAX_STREAM_CHARS)
    timing = outcome.get("timing") or {}
    phase = PHASE_BY_OUTCOME[outcome["status"]]
    status: dict[str, Any] = {
        "phase": phase,
        "exitCode": outcome.get("exit_code"),
        "stdout": stdout,
        "stderr": stderr,
        "stdoutTruncated": bool(outcome.get("stdout_truncated")) or out_cut,
        "stderrTruncated": bool(outcome.get("stderr_truncated")) or err_cut,
        "output": outcome.get("output"),
        "error": outcome.get("error"),
        "timing": {
            "startupMs": int(timing.get("startup_ms") or 0),
            "depInstallMs": int(timing.get("dep_install_ms") or 0),
            "executionMs": int(timing.get("execution_ms") or 0),
            "totalMs": int(timing.get("total_ms") or 0),
            "phaseAtExit": timing.get("phase_at_exit") or "failed",
        },
        "artifacts": [
            {
                "name": a.get("name"),
                "sizeBytes": a.get("size_bytes"),
                "sha256": a.get("sha256"),
                "contentType": a.get("content_type"),
            }
            for a in outcome.get("artifacts") or []
        ],
        "runtime": outcome.get("runtime"),
        "finishedAt": format_time(now),
    }
    error = outcome.get("error") or {}
    status["message"] = (error.get("message") or f"job {phase.lower()}")[:MAX_MESSAGE_CHARS]
    return status


def conditions_for(
    phase: str, reason: str, message: str, now: datetime.datetime, previous: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """kstatus-style conditions: Ready plus Succeeded/Failed; transition times kept when unchanged."""
    finished = phase in TERMINAL_PHASES
    wanted = {
        "Ready": "True" if finished else "False",
        "Succeeded": "True" if phase == "Succeeded" else ("False" if finished else "Unknown"),
        "Failed": "True" if finished and phase != "Succeeded" else ("False" if finished else "Unknown"),
    }
    old = {c.get("type"): c for c in previous}
    result = []
    for kind, value in wanted.items():
        before = old.get(kind) or {}
        changed = before.get("status") != value
        result.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message[:MAX_MESSAGE_CHARS],
                "lastTransitionTime": format_time(now) if changed else before.get("lastTransitionTime"),
            }
        )
    return result


# ---------------------------------------------------------------------------------------------
# the plan


def _status(observed: Observed, phase: str, reason: str, message: str, **fields: Any) -> dict[str, Any]:
    job = observed.job
    old = job.get("status") or {}
    status = {"phase": phase, "message": message[:MAX_MESSAGE_CHARS], **fields}
    status["observedGeneration"] = (job.get("metadata") or {}).get("generation", 1)
    status["conditions"] = conditions_for(phase, reason, message, observed.now, old.get("conditions") or [])
    return status


def _finish(
    observed: Observed,
    plan: Plan,
    *,
    install_log: str | None = None,
    job_log: str | None = None,
    exit_code: int | None = None,
    oom: bool = False,
    deadline: bool = False,
    cancelled: bool = False,
    error: dict[str, Any] | None = None,
) -> Plan:
    from tako_runner.outcome import parse_envelope

    install_env = parse_envelope(install_log) if install_log else None
    run_env = parse_envelope(job_log) if job_log else None
    outcome = classify(
        install_env,
        run_env,
        exit_code=exit_code,
        oom_killed=oom,
        deadline_exceeded=deadline,
        cancelled=cancelled,
        runtime="gvisor",
    ).to_dict()
    if error is not None:
        outcome["status"] = "failed"
        outcome["error"] = error
    record = outcome_status(outcome, observed.now)
    reason = (outcome.get("error") or {}).get("type") or "Completed"
    record.update(_status(observed, record["phase"], reason, record["message"]))
    plan.status = record
    plan.cleanup = True
    plan.released = True
    pod = observed.pod
    if pod is not None:
        plan.delete_pod = pod["metadata"]["name"]
    event_type = "Normal" if record["phase"] == "Succeeded" else "Warning"
    plan.events.append((event_type, record["phase"], record["message"]))
    return plan


def plan(observed: Observed) -> Plan:
    job = observed.job
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    phase = status.get("phase") or ""
    now = observed.now
    limits = observed.limits
    result = Plan()

    # 1. Finished: clean up leftovers and delete the job after its TTL.
    if phase in TERMINAL_PHASES:
        if observed.pod is not None:
            result.delete_pod = observed.pod["metadata"]["name"]
        ttl = spec.get("ttlSecondsAfterFinished", limits.default_ttl_seconds)
        finished_at = parse_time(status.get("finishedAt"))
        if ttl is not None and finished_at is not None:
            remaining = (finished_at - now).total_seconds() + float(ttl)
            if remaining <= 0:
                result.delete_job = True
            else:
                result.requeue_after = remaining
        return result

    # 2. Cancelled (the spec's switch): stop whatever runs, record it.
    if spec.get("cancel"):
        return _finish(observed, result, cancelled=True)

    # 3. Unknown job type: nothing can run; say which type is missing.
    if observed.job_type is None:
        name = spec.get("jobType") or "default"
        error = {
            "type": "job_type_not_found",
            "message": f"PythonJobType {name!r} not found",
            "phase": "startup",
        }
        return _finish(observed, result, error=error)

    # 4. Not admitted yet: Queued, in creation order (the caller decides admission).
    if not observed.admitted:
        if phase != "Queued":
            result.status = _status(
                observed,
                "Queued",
                "Queued",
                "waiting for a free slot (operator concurrency limit)",
                queuedAt=status.get("queuedAt") or format_time(now),
            )
            result.events.append(("Normal", "Queued", "waiting for a free slot"))
        return result

    attempts = int(status.get("attempts") or 0)
    pod = observed.pod
    type_fields = {"jobTypeResolved": (spec.get("jobType") or "default")[:63]}

    # 5. Admitted and no Pod: create the first attempt, or retry after an infrastructure loss.
    if pod is None:
        if attempts == 0:
            result.create_attempt = 1
            result.status = _status(
                observed,
                "Pending",
                "PodCreated",
                "pod created for attempt 1",
                attempts=1,
                queuedAt=status.get("queuedAt") or format_time(now),
                **type_fields,
            )
            result.events.append(("Normal", "Admitted", "attempt 1 started"))
            return result
        return _retry_or_fail(observed, result, attempts, "the pod disappeared before the job finished")

    # 6. The Pod exists: follow it (attempt 1 may exist before its status write landed).
    attempts = max(attempts, 1)
    ended = pod_finished(pod)
    if ended == "infra":
        reason = (pod.get("status") or {}).get("reason") or "NodeLost"
        result.delete_pod = pod["metadata"]["name"]
        return _retry_or_fail(observed, result, attempts, f"pod ended by the infrastructure ({reason})")
    if ended == "deadline":
        return _finish(
            observed,
            result,
            job_log=observed.logs.get(JOB_CONTAINER),
            install_log=observed.logs.get(INSTALL_CONTAINER),
            deadline=True,
        )
    if ended == "container":
        job_state = terminated(pod, JOB_CONTAINER) or terminated(pod, INSTALL_CONTAINER) or {}
        return _finish(
            observed,
            result,
            install_log=observed.logs.get(INSTALL_CONTAINER),
            job_log=observed.logs.get(JOB_CONTAINER),
            exit_code=job_state.get("exitCode"),
            oom=job_state.get("reason") == "OOMKilled",
        )

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
        error = {
            "type": "image_pull_error",
            "message": f"{pull[0]}: {pull[1]}".strip(": ")[:4096],
            "phase": "startup",
        }
        return _finish(observed, result, error=error)

    # Operator-side bound, in case both the runner deadline and activeDeadlineSeconds fail.
    bound = startup + timeout_seconds(job, observed.job_type) + limits.deadline_grace_seconds
    if age > bound:
        return _finish(observed, result, deadline=True)

    pod_phase = (pod.get("status") or {}).get("phase") or "Pending"
    fields: dict[str, Any] = {"attempts": attempts, "podName": pod["metadata"]["name"], **type_fields}
    if pod_phase == "Running":
        fields["startedAt"] = status.get("startedAt") or format_time(now)
        wanted_phase, reason, message = "Running", "PodRunning", f"attempt {attempts} running"
    else:
        wanted_phase, reason, message = "Pending", "PodPending", f"attempt {attempts} starting"
        if pull is not None:
            reason, message = pull[0], f"image pull failing: {pull[1]}"[:MAX_MESSAGE_CHARS]
    if (
        phase != wanted_phase
        or status.get("podName") != fields["podName"]
        or status.get("message") != message
    ):
        result.status = _status(observed, wanted_phase, reason, message, **fields)
        if phase != wanted_phase:
            result.events.append(("Normal", wanted_phase, message))
    result.requeue_after = max(1.0, min(bound - age, 30.0))
    return result


def _retry_or_fail(observed: Observed, result: Plan, attempts: int, why: str) -> Plan:
    """Infrastructure failures are retried with backoff up to max_attempts; then the job fails."""
    limits = observed.limits
    if attempts >= limits.max_attempts:
        error = {
            "type": "infrastructure_error",
            "message": f"{why}; gave up after {attempts} attempts",
            "phase": "startup",
        }
        return _finish(observed, result, error=error)
    annotations = (observed.job.get("metadata") or {}).get("annotations") or {}
    retry_at = parse_time(annotations.get(RETRY_AT))
    if retry_at is None or annotations.get(RETRY_ATTEMPT) != str(attempts + 1):
        delay = backoff_seconds(attempts, limits)
        result.annotations = {
            RETRY_AT: format_time(observed.now + datetime.timedelta(seconds=delay)),
            RETRY_ATTEMPT: str(attempts + 1),
        }
        result.status = _status(
            observed,
            "Pending",
            "Retrying",
            f"{why}; retrying as attempt {attempts + 1} in {delay:g}s",
            attempts=attempts,
        )
        result.events.append(("Warning", "Retrying", result.status["message"]))
        result.requeue_after = delay
        return result
    wait = (retry_at - observed.now).total_seconds()
    if wait > 0:
        result.requeue_after = wait
        return result
    result.create_attempt = attempts + 1
    result.status = _status(
        observed,
        "Pending",
        "PodCreated",
        f"pod created for attempt {attempts + 1}",
        attempts=attempts + 1,
    )
    result.events.append(("Normal", "Retried", f"attempt {attempts + 1} started"))
    return result
