"""Pure status computation: a PythonJob, its Pod (as a plain dict) and the Pod's logs in, ``status`` out.

Classification is not re-implemented here: the runner's framed envelopes are parsed and combined with
what the Pod reports (OOMKilled, DeadlineExceeded, the cancel switch) by ``tako_runner.outcome``, the same
code the local backend uses. This module only maps an Outcome onto the CRD's status fields, keeps those
fields within the etcd budget (docs/crds.md), and maintains kstatus-style conditions.

No kopf, no Kubernetes client, no clock: ``now`` is an argument.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from pydantic import ValidationError

from tako_operator.core import conditions as cond
from tako_operator.core.builders import INSTALL_CONTAINER, JOB_CONTAINER, JobRejected
from tako_operator.core.pods import format_time, parse_time, pod_finished, terminated
from tako_operator.settings import PodSettings
from tako_runner.outcome import Outcome, classify, parse_envelope
from tako_vm.models.crd import (
    STATUS_ARTIFACTS_MAX,
    TERMINAL_PHASES,
    PythonJob,
    PythonJobStatus,
    PythonJobTypeSpec,
    PythonJobTypeStatus,
)

PHASE_BY_OUTCOME = {
    "succeeded": cond.SUCCEEDED,
    "failed": cond.FAILED,
    "timeout": cond.TIMEOUT,
    "oom": cond.OOM,
    "cancelled": cond.CANCELLED,
}
MESSAGE_MAX = 1024
ERROR_MESSAGE_MAX = 4096
LOG_TRUNCATED = "[tako-operator] log truncated at max_log_bytes="


def truncated_log_marker(limit_bytes: int) -> str:
    """The line put in front of a container log the operator read only in part (see kube.read_log)."""
    return f"{LOG_TRUNCATED}{limit_bytes}: its last lines are larger than that\n"


def truncated_log_limit(text: str) -> int | None:
    """The limit named by `truncated_log_marker` at the start of `text`, or None if it was read whole."""
    if not text.startswith(LOG_TRUNCATED):
        return None
    digits = text[len(LOG_TRUNCATED) :].split(":", 1)[0]
    return int(digits) if digits.isdigit() else None


def format_duration(seconds: float) -> str:
    """Short human form for kubectl: 850ms, 12.3s, 4m05s, 2h03m."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def clip_stream(text: str, limit_bytes: int) -> tuple[str, bool]:
    """Keep the head and the tail of ``text`` within ``limit_bytes`` UTF-8 bytes, with a notice between."""
    raw = text.encode("utf-8")
    if len(raw) <= limit_bytes:
        return text, False
    notice_budget = 64
    half = max(0, (limit_bytes - notice_budget) // 2)
    head = raw[:half].decode("utf-8", "ignore")
    tail = raw[len(raw) - half :].decode("utf-8", "ignore")
    dropped = len(raw) - len(head.encode()) - len(tail.encode())
    return f"{head}\n[TRUNCATED {dropped} bytes]\n{tail}", True


# --- reading the Pod --------------------------------------------------------------------------------


def _pod_started_at(pod: dict[str, Any]) -> datetime.datetime | None:
    status = pod.get("status") or {}
    return parse_time(status.get("startTime"))


def _pod_finished_at(pod: dict[str, Any], now: datetime.datetime) -> datetime.datetime:
    times = [
        parse_time((terminated(pod, name) or {}).get("finishedAt"))
        for name in (JOB_CONTAINER, INSTALL_CONTAINER)
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else now


def outcome_from_pod(pod: dict[str, Any], logs: dict[str, str], *, cancelled: bool) -> Outcome:
    """Classify the attempt from the Pod's container states and the envelopes in its logs."""
    job_done = terminated(pod, JOB_CONTAINER)
    install_done = terminated(pod, INSTALL_CONTAINER)
    last = job_done or install_done or {}
    oom = any((t or {}).get("reason") == "OOMKilled" for t in (job_done, install_done))
    deadline = (pod.get("status") or {}).get("reason") == "DeadlineExceeded"
    install_envelope = parse_envelope(logs.get(INSTALL_CONTAINER, "")) if install_done else None
    run_envelope = parse_envelope(logs.get(JOB_CONTAINER, "")) if job_done or cancelled else None
    outcome = classify(
        install_envelope,
        run_envelope,
        exit_code=last.get("exitCode"),
        oom_killed=oom,
        deadline_exceeded=deadline,
        cancelled=cancelled,
        runtime=(pod.get("spec") or {}).get("runtimeClassName"),
    )
    if outcome.exit_code is None and run_envelope is None and not cancelled:
        outcome.exit_code = last.get("exitCode")  # no envelope: the container's own code is all we have
    _name_the_log_limit(outcome, logs, run_envelope is None, install_envelope is None)
    return outcome


def _name_the_log_limit(outcome: Outcome, logs: dict[str, str], no_run: bool, no_install: bool) -> None:
    """A job whose envelope was lost because its log was too big to read says so, naming the limit,
    instead of the generic 'sandbox ended without a result envelope'."""
    error = outcome.error or {}
    if error.get("type") != "internal_error":
        return
    for container, missing in ((JOB_CONTAINER, no_run), (INSTALL_CONTAINER, no_install)):
        limit = truncated_log_limit(logs.get(container, ""))
        if missing and limit is not None:
            error["message"] = (
                f"the {container} container's log is larger than the operator reads "
                f"(max_log_bytes={limit}): its result envelope could not be read"
            )
            return


# --- mapping an Outcome onto status -----------------------------------------------------------------


def outcome_fields(outcome: Outcome, settings: PodSettings) -> dict[str, Any]:
    """The CRD status fields for an Outcome, capped to the status budget."""
    stdout, stdout_cut = clip_stream(outcome.stdout, settings.status_stream_bytes)
    stderr, stderr_cut = clip_stream(outcome.stderr, settings.status_stream_bytes)
    fields: dict[str, Any] = {
        "phase": PHASE_BY_OUTCOME[outcome.status],
        "stdout": stdout,
        "stderr": stderr,
        "stdoutTruncated": outcome.stdout_truncated or stdout_cut,
        "stderrTruncated": outcome.stderr_truncated or stderr_cut,
    }
    if outcome.exit_code is not None:
        fields["exitCode"] = max(-255, min(255, int(outcome.exit_code)))
    if outcome.output is not None:
        size = len(json.dumps(outcome.output, separators=(",", ":")).encode())
        if size <= settings.status_output_bytes:
            fields["output"] = outcome.output
        else:
            fields["outputTruncated"] = True
    if outcome.error:
        error = {
            "type": str(outcome.error.get("type") or "internal_error")[:64],
            "message": str(outcome.error.get("message") or "")[:ERROR_MESSAGE_MAX],
        }
        if outcome.error.get("phase"):
            error["phase"] = outcome.error["phase"]
        fields["error"] = error
    timing = {
        camel: int(outcome.timing[snake])
        for snake, camel in (
            ("startup_ms", "startupMs"),
            ("dep_install_ms", "depInstallMs"),
            ("execution_ms", "executionMs"),
            ("total_ms", "totalMs"),
        )
        if isinstance(outcome.timing.get(snake), int | float) and outcome.timing[snake] >= 0
    }
    if outcome.timing.get("phase_at_exit"):
        timing["phaseAtExit"] = outcome.timing["phase_at_exit"]
    if timing:
        fields["timing"] = timing
    if outcome.artifacts:
        fields["artifacts"] = [
            {
                "name": str(a["name"])[:255],
                "sizeBytes": int(a.get("size_bytes") or 0),
                "sha256": a["sha256"],
                **({"contentType": str(a["content_type"])[:127]} if a.get("content_type") else {}),
            }
            for a in outcome.artifacts[:STATUS_ARTIFACTS_MAX]
        ]
        if len(outcome.artifacts) > STATUS_ARTIFACTS_MAX:
            fields["artifactsOmitted"] = len(outcome.artifacts) - STATUS_ARTIFACTS_MAX
    if outcome.runtime:
        fields["runtime"] = outcome.runtime
    return fields


def _message(phase: str, fields: dict[str, Any]) -> str:
    error = fields.get("error")
    if error:
        return f"{error['type']}: {error['message']}"[:MESSAGE_MAX]
    return {
        "Pending": "Pod created, waiting for it to start",
        "Queued": "Waiting for a free slot",
        "Running": "Running",
        "Succeeded": "Succeeded",
    }.get(phase, phase)


# --- conditions -------------------------------------------------------------------------------------


def conditions_for(
    phase: str,
    message: str,
    generation: int | None,
    now: datetime.datetime,
    previous: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """metav1.Conditions for ``phase``; lastTransitionTime moves only when a condition's status changes.

    A cancelled job that was never admitted keeps Admitted as it was (it never got a slot).
    """
    before = {c.get("type"): c for c in previous}
    desired = []
    for kind, status, reason, text in cond.job_conditions(phase, message):
        old = before.get(kind)
        if (
            kind == cond.ADMITTED
            and phase == cond.CANCELLED
            and old is not None
            and old.get("status") != cond.TRUE
        ):
            status, reason, text = (
                old["status"],
                str(old.get("reason") or "Cancelled"),
                str(old.get("message") or ""),
            )
        desired.append((kind, status, reason, text))
    return merge_conditions(desired, generation, now, previous)


def merge_conditions(
    desired: list[cond.Condition],
    generation: int | None,
    now: datetime.datetime,
    previous: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """metav1.Conditions from (type, status, reason, message), keeping each one's lastTransitionTime
    while its status stays the same."""
    before = {c.get("type"): c for c in previous}
    out = []
    for kind, status, reason, text in desired:
        old = before.get(kind)
        since = (old or {}).get("lastTransitionTime")
        if old is None or old.get("status") != status or not since:
            since = format_time(now)
        condition: dict[str, Any] = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": text[:MESSAGE_MAX],
            "lastTransitionTime": str(since),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
    return out


def job_type_status(
    job_type: dict[str, Any], ready_pods: int, pull_error: str | None, now: datetime.datetime
) -> dict[str, Any]:
    """The status of a PythonJobType (see conditions.job_type_conditions), validated by the shared model."""
    problem = None
    wanted = 0
    try:
        spec = PythonJobTypeSpec.model_validate(job_type.get("spec") or {})
        wanted = spec.standby_pods
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"spec.{where}: {first['msg']}"[:MESSAGE_MAX]
    generation = (job_type.get("metadata") or {}).get("generation")
    previous = (job_type.get("status") or {}).get("conditions") or []
    desired = cond.job_type_conditions(problem, wanted, ready_pods, pull_error)
    fields: dict[str, Any] = {"conditions": merge_conditions(desired, generation, now, previous)}
    if generation is not None:
        fields["observedGeneration"] = int(generation)
    dumped: dict[str, Any] = PythonJobTypeStatus.model_validate(fields).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )
    return dumped


# --- the entry points -------------------------------------------------------------------------------


def _finish(job: PythonJob, fields: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """Add phase-independent fields: message, conditions, observedGeneration."""
    previous = job.status.model_dump(mode="json", exclude_none=True) if job.status else {}
    generation = job.metadata.get("generation")
    phase = fields["phase"]
    fields.setdefault("message", _message(phase, fields))
    fields["message"] = str(fields["message"])[:MESSAGE_MAX]
    if generation is not None:
        fields["observedGeneration"] = int(generation)
    fields["conditions"] = conditions_for(
        phase, fields["message"], generation, now, previous.get("conditions", [])
    )
    return fields


def compute_status(
    job: PythonJob,
    pod: dict[str, Any] | None,
    logs: dict[str, str],
    now: datetime.datetime,
    settings: PodSettings | None = None,
) -> dict[str, Any]:
    """The status the job should have given its Pod (None if there is none) and the Pod's container logs
    (``{"install": ..., "job": ...}``). Returns {} for a job already in a terminal phase: a finished
    record never changes. Fields the operator owns (attempts, queuedAt) are left to it."""
    settings = settings or PodSettings()
    old_phase = job.status.phase if job.status else None
    if old_phase in TERMINAL_PHASES:
        return {}
    if pod is None:
        if job.spec.cancel:
            return cancelled_before_start(job, now)
        return _finish(job, {"phase": old_phase or "Pending"}, now)
    fields: dict[str, Any] = {"podName": (pod.get("metadata") or {}).get("name")}
    started = _pod_started_at(pod)
    if started:
        fields["startedAt"] = format_time(started)
    if job.spec.cancel or pod_finished(pod):
        outcome = outcome_from_pod(pod, logs, cancelled=job.spec.cancel)
        fields.update(outcome_fields(outcome, settings))
        finished = _pod_finished_at(pod, now) if not job.spec.cancel else now
        fields["finishedAt"] = format_time(finished)
        if started:
            fields["duration"] = format_duration(max(0.0, (finished - started).total_seconds()))
        elif "timing" in fields and "totalMs" in fields["timing"]:
            fields["duration"] = format_duration(fields["timing"]["totalMs"] / 1000)
        return _finish(job, fields, now)
    running = (pod.get("status") or {}).get("phase") == "Running"
    fields["phase"] = "Running" if running else "Pending"
    runtime = (pod.get("spec") or {}).get("runtimeClassName")
    if runtime:
        fields["runtime"] = runtime
    return _finish(job, fields, now)


def cancelled_before_start(job: PythonJob, now: datetime.datetime) -> dict[str, Any]:
    """A job cancelled before any Pod ran it."""
    fields = {
        "phase": "Cancelled",
        "error": {"type": "cancelled", "message": "Execution was cancelled by user", "phase": "startup"},
        "finishedAt": format_time(now),
    }
    return _finish(job, fields, now)


def queued_status(job: PythonJob, now: datetime.datetime) -> dict[str, Any]:
    """Waiting for a concurrency slot."""
    fields: dict[str, Any] = {"phase": "Queued", "message": "Waiting for a free slot"}
    if not (job.status and job.status.queued_at):
        fields["queuedAt"] = format_time(now)
    return _finish(job, fields, now)


def rejected_status(job: PythonJob, error: JobRejected | str, now: datetime.datetime) -> dict[str, Any]:
    """The job cannot run as specified (unknown job type, disallowed requirements, oversize ConfigMap)."""
    text = str(error)[:ERROR_MESSAGE_MAX]
    fields = {
        "phase": "Failed",
        "error": {"type": "config_error", "message": text, "phase": "startup"},
        "finishedAt": format_time(now),
    }
    return _finish(job, fields, now)


def observe_generation(job: dict[str, Any]) -> dict[str, Any]:
    """The status fields that record the job's current generation as observed, or {} if it is. A
    finished job's record never changes otherwise, but a spec change on it (spec.cancel set after the
    end) must be observed: else kstatus, Argo CD and `kubectl wait` see an unobserved generation forever."""
    generation = (job.get("metadata") or {}).get("generation")
    status = job.get("status") or {}
    if generation is None or not status or status.get("observedGeneration") == generation:
        return {}
    conditions = [{**c, "observedGeneration": int(generation)} for c in status.get("conditions") or []]
    return {"observedGeneration": int(generation), "conditions": conditions}


def validated(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` checked against the shared PythonJobStatus model (the CRD's status schema) and written
    back in its JSON form: a status the API server would refuse fails here, naming the field."""
    model = PythonJobStatus.model_validate(fields)
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return dumped


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change anything (so unchanged status is never re-written)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
