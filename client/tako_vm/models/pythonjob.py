"""Reading a ``PythonJob`` as the contract's records (pure: plain dicts in, models out).

Shared by the shim's kubernetes backend (``GET /jobs/{id}``, results, history) and the operator (the body
of a completion webhook is the record ``GET /jobs/{id}/result`` returns), so both say the same thing.

A job's completion webhook lives in the object too: ``spec.webhook.url`` (set by the shim at submit, or by
``kubectl apply``) and ``status.webhook`` (written only by the operator, which sends it):
``webhookId, state, attempts, lastStatusCode, lastError, nextAttemptTime, windowEndTime, deliveredTime``.
``delivery_from_job`` and ``webhook_status`` translate between that and ``tako_vm.delivery.state.Delivery``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, cast

from tako_vm.delivery.state import Delivery, webhook_id_for
from tako_vm.models.crd import CONTRACT_STATUS_BY_PHASE, TERMINAL_PHASES
from tako_vm.models.wire import ExecutionRecordFull, QueueStatus, WebhookDelivery


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def job_meta(job: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], job.get("metadata") or {})


def job_spec(job: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], job.get("spec") or {})


def job_status(job: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], job.get("status") or {})


def phase(job: dict[str, Any]) -> str:
    return str(job_status(job).get("phase") or "Pending")


def is_terminal(job: dict[str, Any]) -> bool:
    return phase(job) in TERMINAL_PHASES


def contract_status(job: dict[str, Any]) -> QueueStatus:
    return cast(QueueStatus, CONTRACT_STATUS_BY_PHASE.get(phase(job), "queued"))


def iso_time(value: Any) -> str | None:
    """Kubernetes timestamps (``...Z``) as the contract's ISO 8601 with an explicit offset."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).isoformat()
    except ValueError:
        return str(value)


def duration_ms_of(status: dict[str, Any]) -> int | None:
    started, finished = iso_time(status.get("startedAt")), iso_time(status.get("finishedAt"))
    if started and finished:
        try:
            delta = datetime.fromisoformat(finished) - datetime.fromisoformat(started)
            return max(0, int(delta.total_seconds() * 1000))
        except ValueError:
            pass
    total = (status.get("timing") or {}).get("totalMs")
    return int(total) if isinstance(total, int) else None


def _snake_timing(timing: dict[str, Any] | None) -> dict[str, Any] | None:
    if not timing:
        return None
    keys = {
        "startupMs": "startup_ms",
        "depInstallMs": "dep_install_ms",
        "executionMs": "execution_ms",
        "totalMs": "total_ms",
        "phaseAtExit": "phase_at_exit",
    }
    return {snake: timing.get(camel) for camel, snake in keys.items()}


def record_from_job(job: dict[str, Any]) -> ExecutionRecordFull:
    """The contract's full execution record for a PythonJob (slim view: ``.slim()``)."""
    meta, spec, status = job_meta(job), job_spec(job), job_status(job)
    job_type_ref = str(spec.get("jobType") or "default")
    job_type = job_type_ref.split("@", 1)[0]
    version = job_type_ref if "@" in job_type_ref else f"{job_type}@latest"
    code = spec.get("code")
    input_data = spec.get("inputData") or {}
    return ExecutionRecordFull(
        execution_id=str(meta.get("name")),
        status=contract_status(job),
        job_type=job_type,
        job_version=version,
        job_ref=version,
        created_at=iso_time(meta.get("creationTimestamp")) or "",
        started_at=iso_time(status.get("startedAt")),
        ended_at=iso_time(status.get("finishedAt")),
        duration_ms=duration_ms_of(status) if is_terminal(job) else None,
        exit_code=status.get("exitCode"),
        stdout=status.get("stdout") or "",
        stderr=status.get("stderr") or "",
        output=status.get("output"),
        error=status.get("error"),
        timing=_snake_timing(status.get("timing")),
        runtime=status.get("runtime"),
        artifacts=[
            {
                "name": a.get("name"),
                "size_bytes": a.get("sizeBytes", 0),
                "sha256": a.get("sha256"),
                "content_type": a.get("contentType"),
            }
            for a in status.get("artifacts") or []
        ],
        code_hash=sha256_hex(code) if isinstance(code, str) else None,
        input_hash=sha256_hex(canonical_json(input_data)),
        parent_execution_id=spec.get("parentJob"),
        relationship=spec.get("relationship"),
        stdout_truncated=bool(status.get("stdoutTruncated")),
        stderr_truncated=bool(status.get("stderrTruncated")),
        idempotency_key=spec.get("idempotencyKey"),
    )


# -- completion webhooks --------------------------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    """A status timestamp (RFC 3339) as Unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_url(job: dict[str, Any]) -> str | None:
    url = (job_spec(job).get("webhook") or {}).get("url")
    return str(url) if url else None


def delivery_from_job(job: dict[str, Any]) -> Delivery | None:
    """The job's webhook delivery (``None``: the job has no ``spec.webhook.url``). Before the first
    attempt it is ``waiting`` with ``webhook-id`` ``msg_<uid>`` (one per object, so a job re-created
    under the same name is a new message)."""
    url = webhook_url(job)
    if url is None:
        return None
    meta = job_meta(job)
    name = str(meta.get("name") or "")
    stored = job_status(job).get("webhook") or {}
    state = stored.get("state")
    return Delivery(
        job_id=name,
        tenant=str(meta.get("namespace") or ""),
        url=url,
        webhook_id=str(stored.get("webhookId") or webhook_id_for(str(meta.get("uid") or name))),
        state=state if state in ("waiting", "pending", "delivered", "failed") else "waiting",
        attempts=int(stored.get("attempts") or 0),
        last_status_code=stored.get("lastStatusCode"),
        last_error=stored.get("lastError"),
        next_attempt_at=_seconds(stored.get("nextAttemptTime")) or 0.0,
        window_ends_at=_seconds(stored.get("windowEndTime")),
        delivered_at=_seconds(stored.get("deliveredTime")),
    )


def webhook_status(delivery: Delivery) -> dict[str, Any]:
    """``status.webhook`` for ``delivery`` (every key present: a merge patch clears what is ``None``)."""
    return {
        "webhookId": delivery.webhook_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error[:1024] if delivery.last_error else None,
        "nextAttemptTime": _rfc3339(delivery.next_attempt_at) if delivery.state == "pending" else None,
        "windowEndTime": _rfc3339(delivery.window_ends_at),
        "deliveredTime": _rfc3339(delivery.delivered_at),
    }


def webhook_of(job: dict[str, Any]) -> WebhookDelivery | None:
    """The ``webhook`` field of ``GET /jobs/{id}`` (the local backend's shape)."""
    delivery = delivery_from_job(job)
    return None if delivery is None else WebhookDelivery.model_validate(delivery.describe())
