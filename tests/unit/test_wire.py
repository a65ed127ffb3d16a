"""The wire models and our generated OpenAPI document against the reference Tako VM 0.3.0 contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tako_shim.http.app import ROUTES
from tako_shim.http.openapi import build_openapi
from tako_vm.models.wire import ExecuteRequest, ExecutionRecordFull, ForkRequest, RerunRequest

REFERENCE = Path("/work/shared/reference/takovm-0.3.0-openapi.json")
# Reference routes we deliberately do not serve (docs/api.md explains why).
NOT_SERVED = {
    (
        "post",
        "/job-types/{name}/build",
    ),  # job types are configuration / PythonJobType objects, not image builds
    ("delete", "/dlq/{entry_id}"),  # /dlq is a view over failed records, which are never deleted by hand
}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        pytest.skip(f"reference OpenAPI document not present at {REFERENCE}")
    loaded: dict[str, Any] = json.loads(REFERENCE.read_text())
    return loaded


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return build_openapi(ROUTES)


def test_every_reference_route_is_served(reference: dict[str, Any], ours: dict[str, Any]) -> None:
    theirs = {(m, p) for p, ops in reference["paths"].items() for m in ops}
    mine = {(m, p) for p, ops in ours["paths"].items() for m in ops}
    assert theirs - mine == NOT_SERVED
    assert ("get", "/openapi.json") in mine


BEYOND_QUERY_PARAMETERS = {("get", "/executions"): {"session_id"}}  # issue #14: one session's calls


def test_every_reference_query_parameter_is_accepted(reference: dict[str, Any], ours: dict[str, Any]) -> None:
    for path, ops in reference["paths"].items():
        for method, op in ops.items():
            if (method, path) in NOT_SERVED:
                continue
            theirs = {p["name"]: p["schema"] for p in op.get("parameters", [])}
            mine = {p["name"]: p["schema"] for p in ours["paths"][path][method].get("parameters", [])}
            assert set(theirs) | BEYOND_QUERY_PARAMETERS.get((method, path), set()) == set(mine), (
                method,
                path,
            )
            for name, schema in theirs.items():
                for bound in ("minimum", "maximum", "default"):
                    assert schema.get(bound) == mine[name].get(bound), (path, name, bound)


BEYOND_REQUEST_FIELDS = {"ExecuteRequest": {"webhook_url"}}  # issue #13: completion webhooks
BOUNDS = ("minLength", "maxLength", "minimum", "maximum", "pattern", "maxItems")


def _bounds(prop: dict[str, Any]) -> dict[str, Any]:
    found = {k: prop[k] for k in BOUNDS if k in prop}
    for option in prop.get("anyOf", []):
        found.update({k: option[k] for k in BOUNDS if k in option})
    return found


@pytest.mark.parametrize("name", ["ExecuteRequest", "RerunRequest", "ForkRequest"])
def test_request_models_have_the_reference_fields_and_bounds(
    reference: dict[str, Any], ours: dict[str, Any], name: str
) -> None:
    theirs = reference["components"]["schemas"][name]
    mine = ours["components"]["schemas"][name]
    beyond = BEYOND_REQUEST_FIELDS.get(name, set())  # optional fields the reference does not have
    assert set(theirs["properties"]) == set(mine["properties"]) - beyond
    assert not beyond & set(mine.get("required", []))
    assert set(theirs.get("required", [])) == set(mine.get("required", []))
    assert mine.get("additionalProperties") is False
    for field, prop in theirs["properties"].items():
        mine_bounds = {
            k: float(v) if isinstance(v, int) else v for k, v in _bounds(mine["properties"][field]).items()
        }
        their_bounds = {k: float(v) if isinstance(v, int) else v for k, v in _bounds(prop).items()}
        assert mine_bounds == their_bounds, (name, field)


@pytest.mark.parametrize(
    "name",
    [
        "AsyncExecuteResponse",
        "CancelResponse",
        "ExecuteResponse",
        "HealthResponse",
        "JobStatusResponse",
        "JobTypeResponse",
        "PaginatedResponse",
        "QueueStatsResponse",
    ],
)
def test_response_models_carry_every_reference_field(
    reference: dict[str, Any], ours: dict[str, Any], name: str
) -> None:
    theirs = reference["components"]["schemas"][name]
    mine = ours["components"]["schemas"][name]
    assert set(theirs["properties"]) <= set(mine["properties"])
    assert set(theirs.get("required", [])) <= set(mine.get("required", [])) | {
        k for k, v in mine["properties"].items() if "default" in v
    }


def test_records_carry_the_contract_fields() -> None:
    slim = {
        "execution_id", "status", "job_type", "job_version", "created_at", "started_at", "ended_at",
        "duration_ms", "exit_code", "stdout", "stderr", "output", "error", "timing", "runtime",
        "session_id",  # BEYOND the reference: session executions are listed with their session (#14)
    }  # fmt: skip
    full = slim | {
        "job_ref", "artifacts", "input_artifacts", "resource_usage", "code_hash", "input_hash",
        "parent_execution_id", "relationship", "stdout_truncated", "stderr_truncated", "idempotency_key",
        "session_result",  # BEYOND the reference: a session cell's notebook result (#15 console)
    }  # fmt: skip
    assert set(ExecutionRecordFull.model_fields) == full
    record = ExecutionRecordFull(execution_id="x", status="queued", job_type="default", created_at="t")
    assert set(record.slim().model_dump()) == slim


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "   \n"}, "code"),
        ({"code": "x" * 100_001}, "code"),
        ({"code": "print(1)", "extra": 1}, "extra"),
        ({"code": "print(1)", "idempotency_key": "k" * 129}, "idempotency_key"),
        ({"code": "print(1)", "idempotency_key": "k" * 256}, "idempotency_key"),
        ({"code": "print(1)", "idempotency_key": "short"}, "idempotency_key"),
        ({"code": "print(1)", "idempotency_key": "has space!"}, "idempotency_key"),
        ({"code": "print(1)", "timeout": 0}, "timeout"),
        ({"code": "print(1)", "startup_timeout": 5}, "startup_timeout"),
        ({"code": "print(1)", "job_type": "bad type"}, "job_type"),
        ({"code": "print(1)", "requirements": ["x"] * 51}, "requirements"),
        ({"code": "print(1)", "input_data": {"big": "x" * 1_048_576}}, "input_data"),
        ({"code": "print(1)", "input_data": [1, 2]}, "input_data"),
    ],
)
def test_execute_request_rejects_bad_input_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExecuteRequest.model_validate_json(json.dumps(body))
    assert field in {str(part) for err in info.value.errors() for part in err["loc"]}


def test_accepted_edges() -> None:
    assert ExecuteRequest(code="x" * 100_000, idempotency_key="k" * 128).idempotency_key == "k" * 128
    assert ExecuteRequest(code="print(1)", job_type="data-processing@v1.0.0").job_type
    assert RerunRequest.model_validate({}).timeout is None
    with pytest.raises(ValidationError):
        ForkRequest.model_validate({"code": " "})
