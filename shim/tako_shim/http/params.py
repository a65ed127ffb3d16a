"""Query-parameter models of the routes (validated like bodies: a bad value is a 422 naming it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

SQLITE_MAX_INTEGER = 2**63 - 1


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ViewQuery(_Query):
    view: str | None = Field(
        default=None, description="Use 'full' for extended response with artifacts, hashes, lineage"
    )


class ResultQuery(ViewQuery):
    wait: bool = Field(default=False, description="If true, wait for job completion")
    timeout: float = Field(default=30.0, ge=1.0, le=300.0, description="Max wait time in seconds (1-300)")


class ListQuery(ViewQuery):
    status: str | None = Field(default=None, description="Filter by status (e.g., 'succeeded', 'failed')")
    job_type: str | None = Field(default=None, description="Filter by job type name")
    session_id: str | None = Field(
        default=None, max_length=64, description="Only the executions of this session (docs/sessions.md)"
    )
    limit: int = Field(default=100, ge=1, le=1000, description="Maximum records to return (1-1000)")
    offset: int = Field(default=0, ge=0, description="Number of records to skip for pagination")

    @field_validator("offset")
    @classmethod
    def _offset_storable(cls, value: int) -> int:
        if value > SQLITE_MAX_INTEGER:
            raise ValueError(f"offset must be at most {SQLITE_MAX_INTEGER}")
        return value


class DeadLetterQuery(_Query):
    error_type: str | None = Field(default=None, description="Filter by error type")
    limit: int = Field(default=100, ge=1, le=1000, description="Maximum entries to return (1-1000)")
    offset: int = Field(default=0, ge=0, description="Number of entries to skip")
