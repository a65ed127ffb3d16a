"""`Client`, `AsyncClient` and the module-level functions over httpx.MockTransport.

These tests replace the network with httpx's in-process transport mock so that transport errors
and 5xx answers can be produced on demand; the behaviour against a real server is proven in
tests/integration/test_sdk_server.py.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

import tako_vm
import tako_vm._operations
from tako_vm import AsyncClient, Client

Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests from a list of outcomes in order and records every request it saw."""

    def __init__(self, *outcomes: httpx.Response | Exception) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(r.content) for r in self.requests if r.content]


def _client(script: Script, sleeps: list[float], **kwargs: object) -> Client:
    return Client("http://tako.test", transport=httpx.MockTransport(script), sleep=sleeps.append, **kwargs)  # type: ignore[arg-type]


def _queued(job_id: str = "job-1") -> httpx.Response:
    return httpx.Response(200, json={"job_id": job_id, "status": "queued"})


def test_submit_retries_transport_errors_and_gateway_errors_with_one_idempotency_key() -> None:
    script = Script(
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"detail": "Job queue is full"}, headers={"Retry-After": "2"}),
        _queued(),
    )
    sleeps: list[float] = []
    assert _client(script, sleeps).submit_code("print(1)", timeout=60) == "job-1"
    keys = {body["idempotency_key"] for body in script.bodies()}
    assert len(script.requests) == 3 and len(keys) == 1
    assert {r.headers["X-Correlation-ID"] for r in script.requests} == {
        script.requests[0].headers["X-Correlation-ID"]
    }
    assert 0.375 <= sleeps[0] <= 0.5 and sleeps[1] == 2.0  # backoff, then the server's Retry-After


def test_submit_gives_up_after_the_retry_budget_with_a_retryable_server_error() -> None:
    script = Script(*[httpx.Response(502, json={"detail": "bad gateway"}) for _ in range(3)])
    sleeps: list[float] = []
    with pytest.raises(tako_vm.ServerError) as caught:
        _client(script, sleeps).submit_code("print(1)")
    assert caught.value.retryable and caught.value.status_code == 502
    assert len(script.requests) == 3 and len(sleeps) == 2


def test_transport_failure_surfaces_as_transport_error_with_the_correlation_id() -> None:
    script = Script(*[httpx.ReadTimeout("slow") for _ in range(3)])
    with pytest.raises(tako_vm.TransportError) as caught:
        _client(script, []).submit_code("print(1)")
    assert caught.value.correlation_id == script.requests[0].headers["X-Correlation-ID"]


@pytest.mark.parametrize("method", ["rerun", "cancel"])
def test_non_idempotent_posts_are_never_repeated_after_a_gateway_error(method: str) -> None:
    script = Script(httpx.Response(504, json={"detail": "gateway timeout"}))
    with pytest.raises(tako_vm.ServerError):
        getattr(_client(script, []), method)("job-1")
    assert len(script.requests) == 1


def test_rate_limited_calls_wait_for_retry_after_then_succeed() -> None:
    script = Script(
        httpx.Response(429, json={"detail": "Rate limit exceeded."}, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"job_id": "job-2", "status": "queued"}),
    )
    sleeps: list[float] = []
    assert _client(script, sleeps).rerun("job-1") == "job-2"
    assert sleeps == [1.0]


def test_client_errors_are_typed_and_not_retried() -> None:
    script = Script(
        httpx.Response(
            409, json={"detail": "Idempotency key reused with different payload", "correlation_id": "c"}
        )
    )
    with pytest.raises(tako_vm.ConflictError, match="Idempotency key reused") as caught:
        _client(script, []).submit_code("print(2)", idempotency_key="key-12345")
    assert caught.value.correlation_id == "c" and len(script.requests) == 1


def test_get_result_long_polls_and_continues_after_a_408_until_the_deadline() -> None:
    record = {"execution_id": "job-1", "status": "succeeded", "stdout": "ok\n"}
    script = Script(
        httpx.Response(408, json={"detail": "Timeout waiting for job"}), httpx.Response(200, json=record)
    )
    assert _client(script, []).get_result("job-1", timeout=1000) == record
    first, second = (r.url.params for r in script.requests)
    assert first["wait"] == "true" and float(first["timeout"]) == 300.0
    assert 299.0 < float(second["timeout"]) <= 300.0


def test_get_result_raises_wait_timeout_when_the_caller_deadline_passes() -> None:
    script = Script(httpx.Response(408, json={"detail": "Timeout waiting for job"}))
    with pytest.raises(tako_vm.WaitTimeoutError):
        _client(script, []).get_result("job-1", timeout=0.5)
    assert len(script.requests) == 1 and script.requests[0].url.params["timeout"] == "1.0"


def test_get_result_without_timeout_does_not_wait() -> None:
    script = Script(httpx.Response(200, json={"execution_id": "job-1", "status": "running"}))
    assert _client(script, []).get_result("job-1")["status"] == "running"
    assert "wait" not in script.requests[0].url.params


def test_api_key_and_headers_are_sent() -> None:
    script = Script(httpx.Response(200, json={"status": "healthy"}))
    _client(script, [], api_key="secret-key-0123456789", headers={"X-Tenant": "t"}).health()
    assert script.requests[0].headers["X-API-Key"] == "secret-key-0123456789"
    assert script.requests[0].headers["X-Tenant"] == "t"


def test_module_level_functions_use_the_configured_default_client() -> None:
    script = Script(_queued("job-9"), httpx.Response(200, json={"items": [], "count": 0}))
    session = httpx.Client(transport=httpx.MockTransport(script))
    try:
        tako_vm.configure("http://configured.test", session=session)
        assert tako_vm.submit_code("print(3)", {"a": 1}, timeout=5) == "job-9"
        assert tako_vm.list_executions(limit=3)["count"] == 0
        assert [str(r.url) for r in script.requests] == [
            "http://configured.test/execute/async",
            "http://configured.test/executions?limit=3&offset=0",
        ]
        assert script.bodies()[0]["input_data"] == {"a": 1}
    finally:
        tako_vm.configure()
        session.close()


async def test_async_client_retries_with_one_key_and_awaits_its_sleeps() -> None:
    script = Script(
        httpx.RemoteProtocolError("reset"), httpx.Response(503, json={"detail": "busy"}), _queued()
    )
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(
        "http://tako.test", transport=httpx.MockTransport(script), sleep=record_sleep
    ) as client:
        assert await client.submit_code("print(1)") == "job-1"
        with pytest.raises(tako_vm.NotFoundError):
            script.outcomes.append(httpx.Response(404, json={"detail": "Job not found"}))
            await client.get_status("nope")
    assert len({body["idempotency_key"] for body in script.bodies()[:3]}) == 1
    assert len(sleeps) == 2


# -- one definition per operation, three surfaces ------------------------------------------------

OPERATIONS = [
    name
    for name, value in vars(tako_vm._operations).items()
    if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == "tako_vm._operations"
]


def test_every_operation_is_on_every_surface_with_one_signature() -> None:
    assert len(OPERATIONS) == 19 and "submit_code" in OPERATIONS and "send" in OPERATIONS
    for name in OPERATIONS:
        op = getattr(tako_vm._operations, name)
        expected = list(inspect.signature(op).parameters.values())
        module_level = inspect.signature(getattr(tako_vm, name))
        assert list(module_level.parameters.values()) == expected, name
        for cls in (Client, AsyncClient):
            unbound = list(inspect.signature(getattr(cls, name)).parameters.values())
            assert unbound[0].name == "self" and unbound[1:] == expected, (cls, name)
        bound = inspect.signature(getattr(Client("http://tako.test"), name))
        assert list(bound.parameters.values()) == expected, name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(Client, name)), name
        assert getattr(Client, name).__doc__ == op.__doc__ and op.__doc__, name
        assert str(module_level.return_annotation) != "Plan", name


@pytest.mark.parametrize(
    ("name", "signature"),
    [  # the 0.3.0 signatures (docs/sdk.md and the reference report, section 7)
        ("send", "(func, input_data, timeout=None, job_type=None, requirements=None, *, "
                 "startup_timeout=None, idempotency_key=None, correlation_id=None)"),
        ("submit_code", "(code, input_data=None, *, timeout=None, startup_timeout=None, job_type=None, "
                        "requirements=None, idempotency_key=None, correlation_id=None)"),
        ("get_result", "(job_id, *, timeout=None, view=None)"),
        ("rerun", "(job_id, *, job_type=None, timeout=None)"),
        ("fork", "(job_id, code, *, job_type=None, timeout=None)"),
        ("list_executions", "(*, status=None, job_type=None, limit=50, offset=0, view=None)"),
        ("download_artifact", "(job_id, artifact_name)"),
    ],
)  # fmt: skip
def test_public_signatures_are_those_of_0_3_0(name: str, signature: str) -> None:
    """Every 0.3.0 call still binds the same way: the 0.3.0 parameters come first, unchanged, and
    anything we added since (e.g. `webhook_url`, issue #13) is keyword-only with a default."""
    params = [
        p.replace(annotation=inspect.Parameter.empty)
        for p in inspect.signature(getattr(tako_vm, name)).parameters.values()
    ]
    reference_function = eval(f"lambda {signature[1:-1]}: None")  # the 0.3.0 signature, as code
    reference = list(inspect.signature(reference_function).parameters.values())
    assert params[: len(reference)] == reference, (name, params)
    for extra in params[len(reference) :]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is None, (name, extra)


@pytest.mark.parametrize(
    ("outcome", "cls"),
    [
        (httpx.ConnectError("refused"), tako_vm.APIConnectionError),
        (httpx.ReadTimeout("slow"), tako_vm.APITimeoutError),
        (httpx.Response(403, json={"detail": "not yours"}), tako_vm.PermissionDeniedError),
        (
            httpx.Response(422, json={"detail": [{"loc": ["body", "timeout"]}]}),
            tako_vm.UnprocessableEntityError,
        ),
        (httpx.Response(500, json={"detail": "Internal server error"}), tako_vm.InternalServerError),
    ],
)
def test_a_client_raises_the_typed_error_and_the_old_name_catches_it(
    outcome: httpx.Response | Exception, cls: type[Exception]
) -> None:
    """cancel is never retried, so one outcome decides; the 0.3.0 base class still catches it."""
    old = {
        tako_vm.APIConnectionError: tako_vm.TransportError,
        tako_vm.APITimeoutError: tako_vm.TransportError,
        tako_vm.PermissionDeniedError: tako_vm.ClientError,
        tako_vm.UnprocessableEntityError: tako_vm.ClientError,
        tako_vm.InternalServerError: tako_vm.ServerError,
    }[cls]
    script = Script(outcome)
    with pytest.raises(old) as caught:
        _client(script, []).cancel("job-1")
    assert type(caught.value) is cls and len(script.requests) == 1
    if isinstance(caught.value, tako_vm.TransportError):
        assert caught.value.correlation_id == script.requests[0].headers["X-Correlation-ID"]


async def test_async_get_result_keeps_long_polling_after_a_408() -> None:
    record = {"execution_id": "job-1", "status": "succeeded"}
    script = Script(
        httpx.Response(408, json={"detail": "Timeout waiting for job"}), httpx.Response(200, json=record)
    )
    async with AsyncClient("http://tako.test", transport=httpx.MockTransport(script)) as client:
        assert await client.get_result("job-1", timeout=1000) == record
    assert [r.url.params["wait"] for r in script.requests] == ["true", "true"]


def test_send_raises_execution_error_with_the_run_output() -> None:
    failed = {"success": False, "error": "boom", "stdout": "so far\n", "stderr": "Traceback", "exit_code": 1}
    script = Script(httpx.Response(200, json=failed, headers={"X-Correlation-ID": "corr-9"}))
    with pytest.raises(tako_vm.ExecutionError, match="boom") as caught:
        _client(script, []).send(double, Number(2))
    assert caught.value.stdout == "so far\n" and caught.value.exit_code == 1
    assert caught.value.correlation_id == "corr-9"
    assert json.loads(script.requests[0].content)["input_data"] == {"value": 2}


@dataclass
class Number:
    value: int


def double(data: Number) -> Number:
    return Number(data.value * 2)
