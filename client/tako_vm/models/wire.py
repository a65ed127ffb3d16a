"""The REST wire models of the Tako VM contract, shared by the shim (server side) and the SDK.

Field names and bounds follow the reference Tako VM 0.3.0 OpenAPI document. Request models reject
unknown fields (``extra="forbid"``); response models ignore unknown fields so an older SDK keeps
working against a newer server.

Request numbers are JSON numbers, nothing looser: pydantic's lax mode would take ``true`` as a
timeout of 1 second and ``"30"`` as 30, and would let ``NaN``/``Infinity`` (which Python's JSON
parser accepts but JSON does not have) into ``input_data``. Both are refused with a 422 naming the
field; an integral number such as ``30.0`` is still accepted as ``30`` for integer fields.

One deliberate difference: the reference schema allows 8..255-character idempotency keys but its
server fails with a 500 on keys longer than 128 characters. We publish the same 8..255 schema bound
and reject 129..255-character keys with a 422 that names the field (``IDEMPOTENCY_KEY_MAX_ACCEPTED``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tako_vm.models.crd import WEBHOOK_URL_MAX_CHARS

QueueStatus = Literal["queued", "pending", "running", "succeeded", "failed", "timeout", "oom", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "timeout", "oom", "cancelled"})

CODE_MAX_CHARS = 100_000
INPUT_MAX_SERIALIZED_CHARS = 1_048_576
REQUIREMENTS_MAX_ITEMS = 50
IDEMPOTENCY_KEY_MAX_ACCEPTED = 128
JOB_TYPE_PATTERN = r"^[a-zA-Z0-9_-]+(@[a-zA-Z0-9_.@:-]+)?$"
IDEMPOTENCY_KEY_PATTERN = r"^[a-zA-Z0-9_-]+$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _code_not_blank(code: str) -> str:
    if not code.strip():
        raise ValueError("Code cannot be empty")
    return code


def _json_integer(value: Any) -> Any:
    """Before an integer field's own validation: refuse booleans and strings (lax mode coerces them)."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer number of seconds, not a boolean ({str(value).lower()})")
    if isinstance(value, str):
        raise ValueError("must be an integer number of seconds, not a string")
    return value


def non_finite_path(value: Any, path: str = "input_data") -> str | None:
    """The path of the first NaN/Infinity inside ``value`` (JSON has no such numbers), else ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_path(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


class ExecuteRequest(_Request):
    """Body of ``POST /execute`` and ``POST /execute/async``."""

    code: str = Field(
        min_length=1, max_length=CODE_MAX_CHARS, description="Python code to execute (max 100KB)"
    )
    input_data: dict[str, Any] = Field(
        default_factory=dict, description="Input data as JSON (max 1MB when serialized)"
    )
    timeout: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description="Timeout for code execution in seconds. The deployment's configured max_timeout "
        "may impose a lower limit.",
    )
    startup_timeout: int | None = Field(
        default=None,
        ge=10,
        le=600,
        description="Timeout for startup phase (sandbox + deps) in seconds (10-600)",
    )
    job_type: str | None = Field(
        default=None,
        max_length=128,
        pattern=JOB_TYPE_PATTERN,
        description="Job type name (e.g., 'data-processing' or 'data-processing@v1.0.0')",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=8,
        max_length=255,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Client-provided key for idempotent job submission "
        f"(alphanumeric, 8-255 chars by schema; keys over {IDEMPOTENCY_KEY_MAX_ACCEPTED} chars get 422)",
    )
    requirements: list[str] | None = Field(
        default=None,
        max_length=REQUIREMENTS_MAX_ITEMS,
        description="Python packages to install at runtime (e.g., ['pandas', 'numpy>=1.20'])",
    )
    webhook_url: str | None = Field(
        default=None,
        min_length=8,
        max_length=WEBHOOK_URL_MAX_CHARS,
        description="http(s) URL that gets the signed record (Standard Webhooks) when the job ends; "
        "default: the tenant's webhook_default_urls entry. Private addresses are refused (422).",
    )

    _check_code = field_validator("code")(_code_not_blank)

    _strict_timeouts = field_validator("timeout", "startup_timeout", mode="before")(_json_integer)

    @field_validator("input_data")
    @classmethod
    def _input_json_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = non_finite_path(value)
        if bad is not None:
            raise ValueError(f"{bad} is NaN or Infinity, which JSON cannot represent; send a finite number")
        if len(json.dumps(value)) > INPUT_MAX_SERIALIZED_CHARS:
            raise ValueError("input_data exceeds 1MB limit when serialized")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _key_accepted_length(cls, value: str | None) -> str | None:
        if value is not None and len(value) > IDEMPOTENCY_KEY_MAX_ACCEPTED:
            raise ValueError(
                f"idempotency_key is {len(value)} characters; this server accepts at most "
                f"{IDEMPOTENCY_KEY_MAX_ACCEPTED}"
            )
        return value


class RerunRequest(_Request):
    """Body of ``POST /jobs/{id}/rerun``: the parent's code and input; unset fields keep the parent's."""

    job_type: str | None = Field(
        default=None, max_length=128, pattern=JOB_TYPE_PATTERN, description="Optional job type override"
    )
    timeout: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description="Optional timeout override. The deployment's configured max_timeout may impose a "
        "lower limit.",
    )

    _strict_timeout = field_validator("timeout", mode="before")(_json_integer)


class ForkRequest(RerunRequest):
    """Body of ``POST /jobs/{id}/fork``: new code on the parent's input."""

    code: str = Field(min_length=1, max_length=CODE_MAX_CHARS, description="New Python code to execute")

    _check_code = field_validator("code")(_code_not_blank)


class ExecutionError(_Response):
    type: str
    message: str
    phase: str | None = None


class Timing(_Response):
    startup_ms: int | None = None
    dep_install_ms: int | None = None
    execution_ms: int | None = None
    total_ms: int | None = None
    phase_at_exit: str | None = None


class ArtifactInfo(_Response):
    name: str
    size_bytes: int
    sha256: str
    content_type: str | None = None


class ResourceUsage(_Response):
    max_rss_mb: float | None = None
    cpu_time_ms: int | None = None
    wall_time_ms: int | None = None


class ExecuteResponse(_Response):
    """Response of the synchronous ``POST /execute`` (200 even when the code failed)."""

    success: bool
    output: dict[str, Any] | None = None
    execution_time: float
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: str | None = None
    job_type: str | None = None
    execution_id: str | None = Field(
        default=None, description="Execution ID correlating this run with /executions records and logs"
    )
    runtime: str | None = Field(
        default=None, description="Effective isolation runtime: 'runsc' (gVisor) or a weaker fallback."
    )


class AsyncExecuteResponse(_Response):
    job_id: str
    status: QueueStatus


class WebhookDelivery(_Response):
    """The completion webhook of one job: what was sent, how often, and what comes next."""

    webhook_id: str = Field(description="The `webhook-id` header, the same on every attempt")
    url: str
    state: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job runs; pending: being retried; delivered: 2xx; failed: window over"
    )
    attempts: int = 0
    last_status_code: int | None = Field(default=None, description="HTTP status of the last attempt")
    last_error: str | None = Field(default=None, description="Why the last attempt failed, if it did")
    next_attempt_at: str | None = Field(default=None, description="ISO 8601 time of the next attempt")
    delivered_at: str | None = None


class JobStatusResponse(_Response):
    job_id: str = Field(description="Unique job identifier")
    status: QueueStatus = Field(description="Current status")
    created_at: str | None = Field(default=None, description="ISO 8601 timestamp when job was created")
    duration_ms: int | None = Field(default=None, description="Execution duration in milliseconds")
    queue_position: int | None = Field(default=None, description="Position in queue (if pending)")
    webhook: WebhookDelivery | None = Field(
        default=None, description="Completion webhook delivery state (only for jobs that have one)"
    )


class ExecutionRecord(_Response):
    """The slim execution record (default view)."""

    execution_id: str
    status: QueueStatus
    job_type: str
    job_version: str | None = None
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output: dict[str, Any] | None = None
    error: ExecutionError | None = None
    timing: Timing | None = None
    runtime: str | None = None
    session_id: str | None = Field(default=None, description="The session this execution ran in (if any)")


class ExecutionRecordFull(ExecutionRecord):
    """The full execution record (``?view=full``)."""

    job_ref: str | None = None
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    input_artifacts: list[ArtifactInfo] = Field(default_factory=list)
    resource_usage: ResourceUsage | None = None
    code_hash: str | None = None
    input_hash: str | None = None
    parent_execution_id: str | None = None
    relationship: Literal["rerun", "fork"] | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    idempotency_key: str | None = None
    session_result: str | None = Field(
        default=None, description="A session execution's result: the repr of the cell's last expression"
    )

    def slim(self) -> ExecutionRecord:
        return ExecutionRecord.model_validate(self.model_dump(include=set(ExecutionRecord.model_fields)))


class CancelResponse(_Response):
    status: Literal["cancelled"] = "cancelled"
    job_id: str


class PaginatedResponse(_Response):
    items: list[Any] = Field(description="List of items")
    limit: int = Field(description="Maximum items returned")
    offset: int = Field(description="Number of items skipped")
    has_more: bool = Field(description="Whether more items exist beyond this page")
    count: int = Field(description="Number of items in this response")


class QueueStatsResponse(_Response):
    pending: int = Field(description="Number of jobs waiting in queue")
    running: int = Field(description="Number of jobs currently executing")
    max_workers: int = Field(description="Maximum concurrent workers")
    max_queue_size: int = Field(description="Maximum queue capacity")


class CircuitBreakerStatus(_Response):
    state: Literal["closed", "open", "half_open"] = "closed"
    failure_count: int = 0
    success_count: int = 0
    last_failure: float | None = None


class WarmPoolStatus(_Response):
    filled: int = Field(description="Sandboxes started and waiting for a job")
    target: int = Field(description="How many the pool keeps (warm_pool_size; 0 when it is off)")


class HealthResponse(_Response):
    """``GET /health``. ``docker_available`` is kept for reference clients: it reports whether the
    backend can start sandboxes (runsc locally, the cluster API for the kubernetes backend)."""

    status: Literal["healthy", "degraded"]
    docker_available: bool
    gvisor_available: bool
    circuit_breaker: CircuitBreakerStatus
    version: str
    production_mode: bool = False
    queue_stats: QueueStatsResponse
    backend: str | None = Field(default=None, description="'local' or 'kubernetes'")
    runtime: str | None = Field(default=None, description="Isolation runtime in effect, e.g. 'runsc'")
    runsc_version: str | None = Field(default=None, description="The runsc in use (local backend)")
    platform: str | None = Field(default=None, description="gVisor platform in use: 'systrap' or 'ptrace'")
    security_mode: str | None = Field(default=None, description="'strict' or 'permissive'")
    cgroup: str | None = Field(default=None, description="cgroup mode of the host: v1, hybrid or v2")
    data_dir: str | None = Field(default=None, description="The server's state directory (local backend)")
    warm_pool: WarmPoolStatus | None = Field(default=None, description="Pre-started sandboxes")
    auth_enabled: bool | None = Field(default=None, description="Whether requests need an API key")
    warnings: list[str] = Field(default_factory=list, description="What the operator should fix or know")


class JobTypeResponse(_Response):
    name: str
    requirements: list[str]
    python_version: str
    memory_limit: str
    cpu_limit: float
    timeout: int
    session_enabled: bool = False
    gpu_enabled: bool = False
    gpu_vendor: str | None = None
    image_exists: bool
    network_enabled: bool = False
    startup_timeout: int | None = None


class DLQStatsResponse(_Response):
    """``GET /dlq/stats``: jobs that failed for infrastructure reasons (after server-side retries)."""

    total: int = Field(description="Total number of entries in DLQ")
    by_error_type: dict[str, int] = Field(description="Breakdown by error type")


class DeadLetterEntry(_Response):
    """One ``GET /dlq`` item: a view of a ``failed`` record whose error is not the user's code."""

    id: str = Field(description="The execution id (this server keeps no separate DLQ table)")
    job_id: str
    job_data: dict[str, Any] = Field(default_factory=dict)
    error_type: str
    error_message: str
    retry_count: int = 0
    created_at: str
    client_ip: str | None = None
    correlation_id: str | None = None


class ErrorResponse(_Response):
    """Body of every non-validation HTTP error."""

    detail: str
    correlation_id: str | None = None


class ValidationErrorItem(_Response):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorResponse(_Response):
    """Body of a 422 raised by request validation: a list-shaped ``detail``."""

    detail: list[ValidationErrorItem]
    correlation_id: str | None = None


__all__ = [
    "IDEMPOTENCY_KEY_MAX_ACCEPTED",
    "TERMINAL_STATUSES",
    "ArtifactInfo",
    "AsyncExecuteResponse",
    "CancelResponse",
    "CircuitBreakerStatus",
    "DLQStatsResponse",
    "DeadLetterEntry",
    "ErrorResponse",
    "ExecuteRequest",
    "ExecuteResponse",
    "ExecutionError",
    "ExecutionRecord",
    "ExecutionRecordFull",
    "ForkRequest",
    "HealthResponse",
    "JobStatusResponse",
    "JobTypeResponse",
    "PaginatedResponse",
    "QueueStatsResponse",
    "QueueStatus",
    "RerunRequest",
    "ResourceUsage",
    "Timing",
    "ValidationErrorItem",
    "ValidationErrorResponse",
    "WarmPoolStatus",
    "WebhookDelivery",
]
