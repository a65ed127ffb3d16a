"""Wire models of stateful sessions (``/sessions``), shared by the shim and the SDK (docs/sessions.md).

Requests reject unknown fields and loose numbers, as the job requests do; responses ignore unknown
fields so an older SDK keeps working against a newer server.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field, field_validator

from tako_vm.models.wire import (
    CODE_MAX_CHARS,
    JOB_TYPE_PATTERN,
    REQUIREMENTS_MAX_ITEMS,
    _code_not_blank,
    _json_integer,
    _Request,
    _Response,
)

SessionStatus = Literal["starting", "ready", "busy", "paused", "ended"]
SessionExecutionStatus = Literal["succeeded", "failed", "timeout", "cancelled"]
# Why a session ended (``end_reason``; a 410 names it).
END_REASONS = (
    "deleted",
    "expired",
    "idle",
    "oom_killed",
    "killed_after_timeout",
    "server_restarted",
    "crashed",
    "start_failed",
)
DEFAULT_TTL_SECONDS = 3600
DEFAULT_IDLE_TIMEOUT_SECONDS = 600
MEMORY_LIMIT_PATTERN = r"^[1-9][0-9]{0,6}[mg]$"  # like a job type's: "512m", "2g" (config.memory_limit_mb)
# The execution id of a call made with an Idempotency-Key (docs/api.md "Session execution ids"): both
# backends and the SDK derive it, so a client knows it before it POSTs and can open the call's event stream.
EXECUTION_ID_NAMESPACE = uuid.UUID("8a6b0f1e-3c2d-5e4f-9a7b-6c5d4e3f2a10")


class CreateSessionRequest(_Request):
    """Body of ``POST /sessions`` (every field optional)."""

    job_type: str | None = Field(default=None, pattern=JOB_TYPE_PATTERN, max_length=200)
    requirements: list[str] | None = Field(default=None, max_length=REQUIREMENTS_MAX_ITEMS)
    ttl_seconds: int | None = Field(
        default=None, ge=1, description="Lifetime; at most session_max_ttl_seconds"
    )
    idle_timeout_seconds: int | None = Field(default=None, ge=1, description="Ended after this long idle")
    memory_limit: str | None = Field(default=None, pattern=MEMORY_LIMIT_PATTERN, max_length=32)
    cpu_limit: float | None = Field(default=None, gt=0, le=64)
    idempotency_key: str | None = Field(
        default=None, min_length=8, max_length=128, pattern=r"^[a-zA-Z0-9_-]+$"
    )

    _strict_ints = field_validator("ttl_seconds", "idle_timeout_seconds", mode="before")(_json_integer)


class SessionExecuteRequest(_Request):
    """Body of ``POST /sessions/{id}/execute``."""

    code: str = Field(min_length=1, max_length=CODE_MAX_CHARS)
    timeout: int | None = Field(default=None, ge=1, le=86400)

    _check_code = field_validator("code")(_code_not_blank)
    _strict_timeout = field_validator("timeout", mode="before")(_json_integer)


class SessionError(_Response):
    type: str
    message: str
    traceback: str | None = None


class SessionExecution(_Response):
    """One call's outcome: ``result`` is the repr of the cell's last expression (notebook semantics)."""

    execution_id: str
    session_id: str
    status: SessionExecutionStatus
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: SessionError | None = None
    duration_ms: int | None = None


class SessionInfo(_Response):
    """``POST /sessions`` (201) and ``GET /sessions/{id}``."""

    session_id: str
    status: SessionStatus
    created_at: str
    expires_at: str
    last_activity: str | None = None
    executions: int = 0
    end_reason: str | None = None
    ended_at: str | None = None
    job_type: str | None = None
    ttl_seconds: int | None = None
    idle_timeout_seconds: int | None = None
    runtime: str | None = None


class SessionList(_Response):
    items: list[SessionInfo]
    count: int


def execution_id_for_key(session_id: str, idempotency_key: str) -> str:
    """The execution id of the call ``POST /sessions/{session_id}/execute`` with this Idempotency-Key:
    ``uuid5(EXECUTION_ID_NAMESPACE, f"{session_id}:{idempotency_key}")`` (a call without a key gets a
    server-chosen UUID)."""
    return str(uuid.uuid5(EXECUTION_ID_NAMESPACE, f"{session_id}:{idempotency_key}"))


def session_gone_detail(session_id: str, reason: str | None) -> str:
    """The 410 detail: which session, and why it ended."""
    return f"Session {session_id} has ended ({reason or 'ended'})"
