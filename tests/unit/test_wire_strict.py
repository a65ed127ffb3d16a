"""Request models take JSON as JSON: no lax coercions where the contract says integer, no NaN/Infinity.

pydantic's lax mode turned ``"timeout": true`` into a 1-second timeout and ``"30"`` into 30, and
Python's JSON parser lets ``NaN``/``Infinity`` into ``input_data`` (JSON has neither; the job's
``/input/data.json`` would not be JSON, and the Kubernetes API refuses such a body). Each is now a
422 naming the field; the error body itself stays strict JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tako_shim.http.middleware import RequestValidationFailed
from tako_vm.models.wire import ExecuteRequest, ForkRequest, RerunRequest, non_finite_path


def reject(model: type[BaseModel], raw: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(raw)
    return info.value


@pytest.mark.parametrize(
    ("raw", "where", "says"),
    [
        ('{"code":"print(1)","input_data":{"x":NaN}}', "input_data", "input_data.x is NaN or Infinity"),
        ('{"code":"print(1)","input_data":{"x":Infinity}}', "input_data", "input_data.x is NaN"),
        ('{"code":"print(1)","input_data":{"a":[1,{"b":-Infinity}]}}', "input_data", "input_data.a[1].b"),
        ('{"code":"print(1)","timeout":true}', "timeout", "not a boolean (true)"),
        ('{"code":"print(1)","timeout":"30"}', "timeout", "not a string"),
        ('{"code":"print(1)","startup_timeout":false}', "startup_timeout", "not a boolean (false)"),
        ('{"code":"print(1)","startup_timeout":"60"}', "startup_timeout", "not a string"),
        ('{"code":"print(1)","timeout":2.5}', "timeout", "fractional part"),
    ],
)
def test_execute_request_refuses_lax_numbers_naming_the_field(raw: str, where: str, says: str) -> None:
    errors = reject(ExecuteRequest, raw).errors()
    assert [e["loc"] for e in errors] == [(where,)]
    assert says in errors[0]["msg"]


@pytest.mark.parametrize(("model", "body"), [(RerunRequest, {}), (ForkRequest, {"code": "print(2)"})])
@pytest.mark.parametrize("timeout", [True, False, "5"])
def test_rerun_and_fork_timeouts_are_integers_too(
    model: type[BaseModel], body: dict[str, Any], timeout: Any
) -> None:
    errors = reject(model, json.dumps({**body, "timeout": timeout})).errors()
    assert [e["loc"] for e in errors] == [("timeout",)]


def test_json_numbers_the_contract_allows_still_pass() -> None:
    request = ExecuteRequest.model_validate_json(
        '{"code":"print(1)","timeout":30.0,"startup_timeout":60,'
        '"input_data":{"f":1.5e300,"n":-0.0,"flag":true,"none":null,"s":"NaN"}}'
    )
    assert request.timeout == 30 and request.startup_timeout == 60
    assert request.input_data["flag"] is True and request.input_data["s"] == "NaN"
    assert ExecuteRequest(code="print(1)", input_data={"ok": [1, 2.0, {"x": 3}]}).input_data["ok"][1] == 2.0


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": 1.0, "b": [float("nan")]}, "input_data.b[0]"),
        ({"deep": {"deeper": {"x": float("-inf")}}}, "input_data.deep.deeper.x"),
        ({"fine": [1, 2.5, "inf", None, True]}, None),
    ],
)
def test_non_finite_path_names_the_first_bad_number(value: dict[str, Any], path: str | None) -> None:
    assert non_finite_path(value) == path


def test_the_422_body_for_a_nan_stays_strict_json() -> None:
    error = reject(ExecuteRequest, '{"code":"print(1)","input_data":{"x":NaN}}')
    body = json.dumps(RequestValidationFailed("body", error).detail(), allow_nan=False)  # raises on NaN
    assert '"loc": ["body", "input_data"]' in body and "input_data.x is NaN" in body


def test_the_422_body_does_not_echo_a_large_input_back() -> None:
    big = {"k": "x" * 5000, "bad": True}
    error = reject(ExecuteRequest, json.dumps({"code": "print(1)", "input_data": big, "timeout": True}))
    detail = RequestValidationFailed("body", error).detail()
    assert detail[0]["loc"] == ["body", "timeout"] and detail[0]["input"] is True
    error = reject(
        ExecuteRequest, json.dumps({"code": "print(1)", "input_data": {**big, "n": "x" * 2_000_000}})
    )
    assert "input" not in RequestValidationFailed("body", error).detail()[0]
