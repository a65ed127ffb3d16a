"""The SDK's I/O-free core: request building, the retry policy, error mapping, typed programs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tako_vm import _core as core
from tako_vm._typed import typed_program, typed_result
from tako_vm.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    InternalServerError,
    MalformedResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TakoVMError,
    TransportError,
    UnprocessableEntityError,
    ValidationError,
    WaitTimeoutError,
)

CONFIG = core.ClientConfig(base_url="http://tako.test", max_retries=2)


def _response(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://tako.test/jobs/x")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_submit_always_carries_an_idempotency_key_and_drops_unset_fields() -> None:
    call = core.submit_call(core.Job("print(1)", timeout=60))
    assert call.method == "POST" and call.path == "/execute/async" and call.retryable
    assert call.body is not None
    assert set(call.body) == {"code", "input_data", "timeout", "idempotency_key"}
    assert call.body["idempotency_key"].startswith("sdk-") and len(call.body["idempotency_key"]) == 36
    assert call.body["input_data"] == {}
    given = core.submit_call(core.Job("print(1)"), "my-key-123")
    assert given.body is not None and given.body["idempotency_key"] == "my-key-123"


def test_two_submits_get_two_different_keys() -> None:
    first, second = core.submit_call(core.Job("x=1")), core.submit_call(core.Job("x=1"))
    assert first.body is not None and second.body is not None
    assert first.body["idempotency_key"] != second.body["idempotency_key"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_data": [1, 2]}, "input_data"),
        ({"requirements": "numpy"}, "requirements"),
        ({"requirements": ["numpy", 3]}, "requirements"),
    ],
)
def test_bad_arguments_are_refused_before_sending_and_named(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        core.Job("print(1)", **kwargs)  # type: ignore[arg-type]


def test_ids_are_quoted_into_one_path_segment() -> None:
    call = core.status_call("../executions")
    assert call.path == "/jobs/..%2Fexecutions"
    with pytest.raises(ValidationError, match="job_id"):
        core.status_call("")


def test_result_call_long_polls_with_a_clamped_server_wait() -> None:
    assert core.result_call("j").params is None
    waiting = core.result_call("j", wait=120, view="full")
    assert waiting.params == {"wait": "true", "timeout": 120, "view": "full"}
    assert waiting.read_timeout == 150
    assert core.result_call("j", wait=5000).params == {"wait": "true", "timeout": 300.0}
    assert core.result_call("j", wait=0.2).params == {"wait": "true", "timeout": 1.0}


def test_sync_execute_read_timeout_covers_startup_and_run() -> None:
    assert core.execute_call(core.Job("x", timeout=10)).read_timeout == 10 + 600 + 30
    assert core.execute_call(core.Job("x", timeout=10, startup_timeout=20)).read_timeout == 60
    assert core.execute_call(core.Job("x")).read_timeout == 930
    assert not core.execute_call(core.Job("x")).retryable


def test_list_executions_sends_the_sdk_default_page() -> None:
    call = core.list_executions_call(status="failed")
    assert call.params == {"status": "failed", "limit": 50, "offset": 0}


def test_headers_carry_configured_headers_and_one_correlation_id() -> None:
    config = core.make_config("http://tako.test/", api_key="k" * 16, headers={"X-Extra": "1"})
    assert config.base_url == "http://tako.test"
    headers = core.request_headers(config, core.health_call())
    assert headers["X-API-Key"] == "k" * 16 and headers["X-Extra"] == "1"
    assert len(headers[core.CORRELATION_HEADER]) == 36
    fixed = core.make_config(correlation_id="corr-1")
    assert core.request_headers(fixed, core.health_call())[core.CORRELATION_HEADER] == "corr-1"


def test_config_rejects_nonsense_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        core.make_config("localhost:8000")
    with pytest.raises(ValidationError, match="timeout"):
        core.make_config(timeout=0)
    with pytest.raises(ValidationError, match="max_retries"):
        core.make_config(max_retries=-1)


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, nominal in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        for _ in range(20):
            delay = core.backoff_delay(CONFIG, attempt, rng)
            assert 0.75 * nominal <= delay <= nominal


@pytest.mark.parametrize(
    ("retryable", "status", "headers", "expected"),
    [
        (True, None, {}, "backoff"),  # transport error on a keyed submit / read
        (False, None, {}, None),  # transport error on rerun/fork/cancel/execute
        (True, 502, {}, "backoff"),
        (True, 503, {"Retry-After": "3"}, 3.0),
        (True, 504, {}, "backoff"),
        (False, 503, {}, None),
        (True, 500, {}, None),
        (True, 400, {}, None),
        (True, 409, {}, None),
        (False, 429, {"Retry-After": "2"}, 2.0),  # refused before acting: safe for any call
        (True, 429, {"Retry-After": "9999"}, 60.0),  # hint capped at retry_after_max
    ],
)
def test_retry_policy(
    retryable: bool, status: int | None, headers: dict[str, str], expected: float | str | None
) -> None:
    call = core.Call("POST", "/x", core.parse_object, retryable=retryable)
    response = None if status is None else _response(status, {"detail": "x"}, headers)
    delay = core.retry_delay(CONFIG, call, 0, response, random.Random(1))
    if expected == "backoff":
        assert delay is not None and 0.375 <= delay <= 0.5
    else:
        assert delay == expected
    assert core.retry_delay(CONFIG, call, CONFIG.max_retries, response) is None  # attempts are bounded


@pytest.mark.parametrize(
    ("status", "cls", "old_name"),
    [
        (400, BadRequestError, ClientError),
        (401, AuthenticationError, ClientError),
        (403, PermissionDeniedError, ClientError),
        (404, NotFoundError, ClientError),
        (408, WaitTimeoutError, ClientError),
        (409, ConflictError, ClientError),
        (413, PayloadTooLargeError, ClientError),
        (422, UnprocessableEntityError, ClientError),
        (418, ClientError, APIError),  # a 4xx without a class of its own is a plain ClientError
        (429, RateLimitError, ClientError),
        (500, InternalServerError, ServerError),
        (502, InternalServerError, ServerError),
        (503, InternalServerError, ServerError),
        (504, InternalServerError, ServerError),
    ],
)
def test_error_mapping_by_status(status: int, cls: type[Exception], old_name: type[Exception]) -> None:
    """Each status maps to its typed class, and that class is still caught by the 0.3.0 name."""
    error = core.api_error(_response(status, {"detail": "nope", "correlation_id": "c-1"}))
    assert type(error) is cls
    assert error.status_code == status and error.detail == "nope" and error.correlation_id == "c-1"
    with pytest.raises(old_name):
        raise error
    assert isinstance(error, APIError) and isinstance(error, TakoVMError)
    if isinstance(error, ServerError):
        assert error.retryable is (status in (502, 503, 504))


def test_a_server_422_is_also_a_validation_error() -> None:
    """`except ValidationError` catches a refused argument whether the SDK or the server refused it."""
    error = core.api_error(_response(422, {"detail": [{"loc": ["body", "timeout"], "msg": "too big"}]}))
    with pytest.raises(ValidationError) as caught:
        raise error
    assert isinstance(caught.value, ClientError) and caught.value.status_code == 422
    assert "timeout" in caught.value.detail


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.RemoteProtocolError("reset"), APIConnectionError),
        (httpx.ReadTimeout("slow"), APITimeoutError),
        (httpx.ConnectTimeout("slow"), APITimeoutError),
        (httpx.PoolTimeout("busy"), APITimeoutError),
    ],
)
def test_transport_failures_are_typed_and_still_transport_errors(
    exc: Exception, cls: type[Exception]
) -> None:
    call = core.health_call()
    error = core.transport_error(call, {core.CORRELATION_HEADER: "c-2"}, exc)
    assert type(error) is cls and error.correlation_id == "c-2"
    assert type(exc).__name__ in str(error)
    with pytest.raises(TransportError):
        raise error


def test_error_mapping_details() -> None:
    listed = core.api_error(_response(422, {"detail": [{"loc": ["body", "code"], "msg": "too long"}]}))
    assert json.loads(listed.detail) == [{"loc": ["body", "code"], "msg": "too long"}]
    limited = core.api_error(_response(429, {"detail": "slow down"}, {"Retry-After": "7"}))
    assert isinstance(limited, RateLimitError) and limited.retry_after == 7.0
    plain = core.api_error(_response(502, None, {"X-Correlation-ID": "from-header"}))
    assert plain.detail == "Bad Gateway" and plain.correlation_id == "from-header"


def test_job_id_parser_refuses_bodies_without_one() -> None:
    with pytest.raises(MalformedResponseError, match="job_id"):
        core.parse_job_id(_response(200, {"status": "queued"}))
    assert core.parse_job_id(_response(200, {"job_id": "abc", "status": "queued"})) == "abc"


@dataclass
class Numbers:
    values: list[int]


@dataclass
class Total:
    total: int
    count: int


def add_up(data: Numbers) -> Total:
    return Total(total=sum(data.values), count=len(data.values))


def test_typed_program_runs_and_writes_the_returned_dataclass(tmp_path: Path) -> None:
    """The generated program is executed for real (plain python, paths redirected to tmp_path)."""
    code, payload = typed_program(add_up, Numbers([1, 2, 39]))
    assert payload == {"values": [1, 2, 39]}
    (tmp_path / "data.json").write_text(json.dumps(payload))
    local = code.replace("/input/data.json", str(tmp_path / "data.json")).replace(
        "/output/result.json", str(tmp_path / "result.json")
    )
    subprocess.run([sys.executable, "-c", local], check=True, timeout=30)
    output = json.loads((tmp_path / "result.json").read_text())
    assert output == {"total": 42, "count": 3}
    result = typed_result(add_up, {"success": True, "output": output, "execution_id": "e"}, "c")
    assert result.output == Total(42, 3) and result.job_id == "e" and result.deserialization_error is None
    broken = typed_result(add_up, {"success": True, "output": {"wrong": 1}}, None)
    assert broken.output == {"wrong": 1} and broken.deserialization_error is not None


def test_typed_program_refuses_untyped_functions() -> None:
    def untyped(data):  # type: ignore[no-untyped-def]
        return data

    with pytest.raises(ValidationError, match="dataclass"):
        typed_program(untyped, Numbers([1]))
    with pytest.raises(ValidationError, match="Numbers instance"):
        typed_program(add_up, {"values": [1]})
