"""Pure translation between the local store's rows and the wire models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tako_runner.runner import output_problem
from tako_shim.backends.local.store import JobRow
from tako_vm.models.wire import ExecutionRecordFull, JobStatusResponse


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# The runner refuses deeper results (its ``max_output_depth``); a row stored before it did, or by another
# runner, is still served: its output is left out instead of failing every page it appears on.
MAX_OUTPUT_DEPTH = 64


def record_from_row(row: JobRow) -> ExecutionRecordFull:
    outcome: dict[str, Any] = row.outcome
    output = outcome.get("output")
    if output is not None and output_problem(output, MAX_OUTPUT_DEPTH):
        output = None
    return ExecutionRecordFull(
        execution_id=row.job_id,
        status=row.status,
        job_type=row.job_type,
        job_version=f"{row.job_type}@latest",
        job_ref=f"{row.job_type}@latest",
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_ms=row.duration_ms,
        exit_code=outcome.get("exit_code"),
        stdout=outcome.get("stdout") or "",
        stderr=outcome.get("stderr") or "",
        output=output,
        error=outcome.get("error"),
        timing=outcome.get("timing") or None,
        runtime=outcome.get("runtime"),
        artifacts=outcome.get("artifacts") or [],
        resource_usage=outcome.get("resource_usage"),
        code_hash=row.code_hash,
        input_hash=row.input_hash,
        parent_execution_id=row.parent_execution_id if row.relationship != "session" else None,
        relationship=row.relationship if row.relationship != "session" else None,
        stdout_truncated=bool(outcome.get("stdout_truncated")),
        stderr_truncated=bool(outcome.get("stderr_truncated")),
        idempotency_key=row.idempotency_key,
        session_id=row.parent_execution_id if row.relationship == "session" else None,
        session_result=outcome.get("session_result"),
    )


def status_from_row(row: JobRow, queue_position: int | None) -> JobStatusResponse:
    """``queued`` rows are reported as ``pending`` with their 1-based queue position (the contract)."""
    if row.status == "queued":
        return JobStatusResponse(
            job_id=row.job_id, status="pending", created_at=row.created_at, queue_position=queue_position
        )
    return JobStatusResponse(
        job_id=row.job_id,
        status=row.status,
        created_at=row.created_at,
        duration_ms=row.duration_ms,
    )


def cancelled_outcome(message: str) -> dict[str, Any]:
    return {"error": {"type": "cancelled", "message": message, "phase": None}}


def internal_error_outcome(message: str) -> dict[str, Any]:
    return {"error": {"type": "internal_error", "message": message[:4096], "phase": None}}


def duration_ms(started_at: str | None, ended_at: str) -> int | None:
    if started_at is None:
        return None
    return int((parse_time(ended_at) - parse_time(started_at)).total_seconds() * 1000)
