"""Tako VM SDK: submit Python to a Tako VM server and read back results.

    import tako_vm
    tako_vm.configure("http://localhost:8000")          # headers={"X-API-Key": ...} when auth is on
    job_id = tako_vm.submit_code("print(6 * 7)", timeout=60)
    record = tako_vm.get_result(job_id, timeout=120)     # {"status": "succeeded", "stdout": "42\\n", ...}

The module-level functions delegate to a default blocking `Client` set by `configure()` (created
on first use from `TAKO_VM_URL` / `TAKO_VM_API_KEY`, else `http://localhost:8000`, if `configure`
was never called). For asyncio use `AsyncClient`, whose methods are the same coroutines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from tako_vm._client import AsyncClient, Client, TakoVM
from tako_vm._core import DEFAULT_BASE_URL
from tako_vm._typed import ExecutionResult
from tako_vm._version import __version__
from tako_vm.errors import (
    APIError,
    AuthenticationError,
    ClientError,
    ConflictError,
    ExecutionError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    SDKExecutionError,
    ServerError,
    TakoVMError,
    TransportError,
    ValidationError,
    WaitTimeoutError,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientError",
    "ConflictError",
    "ExecutionError",
    "ExecutionResult",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitError",
    "SDKExecutionError",
    "ServerError",
    "TakoVM",
    "TakoVMError",
    "TransportError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
    "build_job_type",
    "cancel",
    "configure",
    "dlq_stats",
    "download_artifact",
    "execute",
    "fork",
    "get_client",
    "get_execution",
    "get_job_type",
    "get_result",
    "get_status",
    "health",
    "list_executions",
    "list_job_types",
    "pool_stats",
    "rerun",
    "send",
    "send_raw",
    "submit",
    "submit_code",
]

_default_client: Client | None = None
_default_lock = threading.Lock()


def configure(
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 30,
    headers: Mapping[str, str] | None = None,
    session: httpx.Client | None = None,
    connect_timeout: float = 10.0,
    correlation_id: str | None = None,
    *,
    api_key: str | None = None,
    max_retries: int = 2,
) -> None:
    """Point the module-level functions at a server (replaces and closes the previous default client)."""
    global _default_client
    client = Client(
        base_url,
        timeout,
        headers,
        session,
        connect_timeout,
        correlation_id,
        api_key=api_key,
        max_retries=max_retries,
    )
    with _default_lock:
        previous, _default_client = _default_client, client
    if previous is not None:
        previous.close()


def get_client() -> Client:
    """The default client, created from the environment on first use if `configure` was never called."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client(
                os.environ.get("TAKO_VM_URL", DEFAULT_BASE_URL), api_key=os.environ.get("TAKO_VM_API_KEY")
            )
        return _default_client


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
) -> str:
    """Queue `code` and return its job id. Creates an idempotency key when none is given and retries
    transport errors and 502/503/504 with that same key, so a flaky network never runs code twice."""
    return get_client().submit_code(
        code,
        input_data,
        timeout=timeout,
        startup_timeout=startup_timeout,
        job_type=job_type,
        requirements=requirements,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )


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
) -> str:
    """Queue a typed function (one dataclass in, one dataclass out) and return its job id."""
    return get_client().submit(
        func,
        input_data,
        timeout=timeout,
        startup_timeout=startup_timeout,
        job_type=job_type,
        requirements=requirements,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )


def execute(
    code: str,
    input_data: Mapping[str, Any] | None = None,
    *,
    timeout: int | None = None,
    startup_timeout: int | None = None,
    job_type: str | None = None,
    requirements: Sequence[str] | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """Run `code` and wait for it (`POST /execute`); a failed run returns `success: False`, not an error."""
    return get_client().execute(
        code,
        input_data,
        timeout=timeout,
        startup_timeout=startup_timeout,
        job_type=job_type,
        requirements=requirements,
        correlation_id=correlation_id,
    )


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
) -> Any:
    """Run `func(input_data)` in the sandbox and return its dataclass result; `ExecutionError` on failure."""
    return get_client().send(
        func,
        input_data,
        timeout,
        job_type,
        requirements,
        startup_timeout=startup_timeout,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )


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
) -> ExecutionResult:
    """Like `send`, but returns an `ExecutionResult` instead of raising when the code fails."""
    return get_client().send_raw(
        func,
        input_data,
        timeout,
        job_type,
        requirements,
        startup_timeout=startup_timeout,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )


def get_status(job_id: str) -> dict[str, Any]:
    """`{job_id, status, created_at, duration_ms, queue_position}`."""
    return get_client().get_status(job_id)


def get_result(job_id: str, *, timeout: float | None = None, view: str | None = None) -> dict[str, Any]:
    """The job's record; a truthy `timeout` waits up to that long for it to end, else `WaitTimeoutError`."""
    return get_client().get_result(job_id, timeout=timeout, view=view)


def cancel(job_id: str) -> dict[str, Any]:
    """Cancel a queued or running job (`NotFoundError` if unknown or already finished)."""
    return get_client().cancel(job_id)


def rerun(job_id: str, *, job_type: str | None = None, timeout: int | None = None) -> str:
    """Run a finished job's code and input again; returns the new job id."""
    return get_client().rerun(job_id, job_type=job_type, timeout=timeout)


def fork(job_id: str, code: str, *, job_type: str | None = None, timeout: int | None = None) -> str:
    """Run new `code` on a finished job's input; returns the new job id."""
    return get_client().fork(job_id, code, job_type=job_type, timeout=timeout)


def download_artifact(job_id: str, artifact_name: str) -> bytes:
    """The bytes of a file the job wrote to `/output`."""
    return get_client().download_artifact(job_id, artifact_name)


def list_executions(
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
    view: str | None = None,
) -> dict[str, Any]:
    """A page of history: `{items, limit, offset, has_more, count}`."""
    return get_client().list_executions(
        status=status, job_type=job_type, limit=limit, offset=offset, view=view
    )


def get_execution(execution_id: str, *, view: str | None = None) -> dict[str, Any]:
    """One execution record (`view="full"` for artifacts, lineage, hashes)."""
    return get_client().get_execution(execution_id, view=view)


def health() -> dict[str, Any]:
    return get_client().health()


def pool_stats() -> dict[str, Any]:
    return get_client().pool_stats()


def dlq_stats() -> dict[str, Any]:
    return get_client().dlq_stats()


def list_job_types() -> list[Any]:
    return get_client().list_job_types()


def get_job_type(name: str) -> dict[str, Any]:
    return get_client().get_job_type(name)


def build_job_type(name: str) -> dict[str, Any]:
    return get_client().build_job_type(name)
