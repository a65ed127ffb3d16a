"""Every public SDK operation, written once: its signature, its docstring and its logic.

Each operation is a plan (`tako_vm._core.Plan`): a generator that yields the `Call`s it needs and
returns the operation's value. It does no I/O. `Client`, `AsyncClient` and the module-level
functions are generated from these functions (`tako_vm._surface`), so a new operation is one
function here plus one line per surface, and the three can never drift apart.
"""

# `timeout` is the job's time limit (the REST field), not a cancellation scope:

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from tako_vm import _core as core
from tako_vm._core import Plan
from tako_vm._typed import ExecutionResult, typed_program, typed_result
from tako_vm.errors import ExecutionError, WaitTimeoutError

T = TypeVar("T")


def _one(call: core.Call[T]) -> Plan[T]:
    """The plan of an operation that is a single call."""
    result: T = yield call
    return result


# -- jobs ----------------------------------------------------------------------------------------


def submit_code(
    code: str,
    input_data: Mapping[str, Any] | None = None,
    *,
    timeout: int | None = None,
    startup_timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    webhook_url: str | None = None,
) -> Plan[str]:
    """Queue `code` and return its job id at once (`POST /execute/async`). Creates an idempotency
    key when none is given and retries transport errors and 502/503/504 with that same key, so a
    flaky network never runs the code twice. `webhook_url` gets the signed record when the job ends."""
    job = core.Job(code, input_data, timeout, startup_timeout, job_type, requirements, webhook_url)
    return _one(core.submit_call(job, idempotency_key).with_correlation(correlation_id))


def submit(
    func: Callable[..., Any],
    input_data: Any,
    *,
    timeout: int | None = None,
    startup_timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    webhook_url: str | None = None,
) -> Plan[str]:
    """Queue a typed function (one dataclass in, one dataclass out, see `send`) and return its job
    id; the record's `output` is the returned dataclass as a dict."""
    job = core.Job(
        *typed_program(func, input_data), timeout, startup_timeout, job_type, requirements, webhook_url
    )
    return _one(core.submit_call(job, idempotency_key).with_correlation(correlation_id))


def execute(
    code: str,
    input_data: Mapping[str, Any] | None = None,
    *,
    timeout: int | None = None,
    startup_timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    correlation_id: str | None = None,
) -> Plan[dict[str, Any]]:
    """Run `code` and wait for it (`POST /execute`); a failed run returns `success: False`, not an error."""
    job = core.Job(code, input_data, timeout, startup_timeout, job_type, requirements)
    return _one(core.execute_call(job).with_correlation(correlation_id))


JobOptions = tuple[int | None, int | None, str | None, Sequence[str] | None]
"""`core.Job`'s fields after code and input: timeout, startup_timeout, job_type, requirements."""


def _typed_call(
    func: Callable[..., Any], input_data: Any, job_options: JobOptions
) -> core.Call[ExecutionResult]:
    """`POST /execute` of a typed function, its answer parsed into an `ExecutionResult`."""
    code, payload = typed_program(func, input_data)
    call = core.execute_call(core.Job(code, payload, *job_options))

    def parse(response: httpx.Response) -> ExecutionResult:
        return typed_result(func, core.parse_object(response), response.headers.get(core.CORRELATION_HEADER))

    return call.with_parser(parse)


def send_raw(
    func: Callable[..., Any],
    input_data: Any,
    timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    *,
    startup_timeout: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> Plan[ExecutionResult]:
    """Run a typed function and wait; returns an `ExecutionResult` and never raises for a failed run.

    `idempotency_key` is accepted for 0.3.0 compatibility; the sync route ignores it."""
    call = _typed_call(func, input_data, (timeout, startup_timeout, job_type, requirements))
    return _one(call.with_correlation(correlation_id))


def send(
    func: Callable[..., Any],
    input_data: Any,
    timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    *,
    startup_timeout: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> Plan[Any]:
    """Run `func(input_data)` in the sandbox and return its dataclass result; `ExecutionError` on failure.

    `func` takes one dataclass and is annotated to return one; both classes and the function's
    source are sent, and the returned dataclass is rebuilt here."""
    call = _typed_call(func, input_data, (timeout, startup_timeout, job_type, requirements))
    result: ExecutionResult = yield call.with_correlation(correlation_id)
    if not result.success:
        raise ExecutionError(
            result.error or "execution failed",
            stdout=result.stdout,
            stderr=result.stderr,
            exit_code=result.exit_code,
            correlation_id=result.correlation_id,
        )
    return result.output


def get_status(job_id: str) -> Plan[dict[str, Any]]:
    """`{job_id, status, created_at, duration_ms, queue_position}`."""
    return _one(core.status_call(job_id))


def get_result(job_id: str, *, timeout: float | None = None, view: str | None = None) -> Plan[dict[str, Any]]:
    """The job's record. A truthy `timeout` waits up to that many seconds for it to finish
    (long-polls of at most 300 s each), then raises `WaitTimeoutError`; without one it returns
    the record at once, in whatever state it is."""
    if not timeout:
        return (yield core.result_call(job_id, view=view))
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (yield core.result_call(job_id, wait=deadline - time.monotonic(), view=view))
        except WaitTimeoutError:
            if deadline - time.monotonic() < core.MIN_SERVER_WAIT_SECONDS:
                raise


def cancel(job_id: str) -> Plan[dict[str, Any]]:
    """Cancel a queued or running job (`NotFoundError` if unknown or already finished)."""
    return _one(core.cancel_call(job_id))


def rerun(job_id: str, *, job_type: str | None = None, timeout: int | None = None) -> Plan[str]:
    """Run a finished job's code and input again; returns the new job id."""
    return _one(core.rerun_call(job_id, job_type=job_type, timeout=timeout))


def fork(job_id: str, code: str, *, job_type: str | None = None, timeout: int | None = None) -> Plan[str]:
    """Run new `code` on a finished job's input; returns the new job id."""
    return _one(core.fork_call(job_id, code, job_type=job_type, timeout=timeout))


def download_artifact(job_id: str, artifact_name: str) -> Plan[bytes]:
    """The bytes of a file the job wrote to `/output`."""
    return _one(core.artifact_call(job_id, artifact_name))


# -- history and server --------------------------------------------------------------------------


def list_executions(
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
    view: str | None = None,
) -> Plan[dict[str, Any]]:
    """A page of history: `{items, limit, offset, has_more, count}`."""
    return _one(
        core.list_executions_call(status=status, job_type=job_type, limit=limit, offset=offset, view=view)
    )


def get_execution(execution_id: str, *, view: str | None = None) -> Plan[dict[str, Any]]:
    """One execution record (`view="full"` for artifacts, lineage, hashes)."""
    return _one(core.execution_call(execution_id, view=view))


def health() -> Plan[dict[str, Any]]:
    """The server's health (`GET /health`)."""
    return _one(core.health_call())


def pool_stats() -> Plan[dict[str, Any]]:
    """Queue depth and workers (`GET /pool/stats`)."""
    return _one(core.pool_stats_call())


def dlq_stats() -> Plan[dict[str, Any]]:
    """Dead-letter counts by error type (`GET /dlq/stats`)."""
    return _one(core.dlq_stats_call())


def list_job_types() -> Plan[list[Any]]:
    """Every job type the server knows (`GET /job-types`)."""
    return _one(core.list_job_types_call())


def get_job_type(name: str) -> Plan[dict[str, Any]]:
    """One job type (`GET /job-types/{name}`)."""
    return _one(core.job_type_call(name))


def build_job_type(name: str) -> Plan[dict[str, Any]]:
    """Build a job type's image (`POST /job-types/{name}/build`)."""
    return _one(core.build_job_type_call(name))
