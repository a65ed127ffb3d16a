"""Tako VM SDK: submit Python to a Tako VM server and read back results.

    import tako_vm
    tako_vm.configure("http://localhost:8000")          # headers={"X-API-Key": ...} when auth is on
    job_id = tako_vm.submit_code("print(6 * 7)", timeout=60)
    record = tako_vm.get_result(job_id, timeout=120)     # {"status": "succeeded", "stdout": "42\\n", ...}

The module-level functions delegate to a default blocking `Client` set by `configure()` (created
on first use from `TAKO_VM_URL` / `TAKO_VM_API_KEY`, else `http://localhost:8000`, if `configure`
was never called). For asyncio use `AsyncClient`, whose methods are the same coroutines. All
three surfaces are generated from one definition per operation (`tako_vm._operations`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping

import httpx

from tako_vm import _operations as ops
from tako_vm import _sessions, webhooks
from tako_vm._client import AsyncClient, Client, TakoVM
from tako_vm._core import DEFAULT_BASE_URL
from tako_vm._sessions import AsyncSession, Session
from tako_vm._stream import OutputEvent, ResultEvent, StatusEvent, StreamEvent
from tako_vm._surface import default_function
from tako_vm._typed import ExecutionResult
from tako_vm._version import __version__
from tako_vm.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    ExecutionError,
    InternalServerError,
    MalformedResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    SDKExecutionError,
    ServerError,
    SessionEndedError,
    TakoVMError,
    TransportError,
    UnprocessableEntityError,
    ValidationError,
    WaitTimeoutError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncSession",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "ExecutionError",
    "ExecutionResult",
    "InternalServerError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputEvent",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResultEvent",
    "SDKExecutionError",
    "ServerError",
    "Session",
    "SessionEndedError",
    "StatusEvent",
    "StreamEvent",
    "TakoVM",
    "TakoVMError",
    "TransportError",
    "UnprocessableEntityError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
    "build_job_type",
    "cancel",
    "configure",
    "create_session",
    "delete_session",
    "dlq_stats",
    "download_artifact",
    "execute",
    "fork",
    "get_client",
    "get_execution",
    "get_job_type",
    "get_result",
    "get_session",
    "get_status",
    "health",
    "list_executions",
    "list_job_types",
    "list_sessions",
    "pool_stats",
    "rerun",
    "run_in_session",
    "send",
    "send_raw",
    "stream",
    "submit",
    "submit_code",
    "webhooks",
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


def _default() -> Client:
    return get_client()  # looked up at call time, so a patched `get_client` is honoured


def stream(job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
    """The job's live events on the default client (`Client.stream`): status, output chunks, result."""
    return _default().stream(job_id, last_event_id=last_event_id)


submit_code = default_function(ops.submit_code, _default)
submit = default_function(ops.submit, _default)
execute = default_function(ops.execute, _default)
send = default_function(ops.send, _default)
send_raw = default_function(ops.send_raw, _default)
get_status = default_function(ops.get_status, _default)
get_result = default_function(ops.get_result, _default)
cancel = default_function(ops.cancel, _default)
rerun = default_function(ops.rerun, _default)
fork = default_function(ops.fork, _default)
download_artifact = default_function(ops.download_artifact, _default)
list_executions = default_function(ops.list_executions, _default)
get_execution = default_function(ops.get_execution, _default)
health = default_function(ops.health, _default)
pool_stats = default_function(ops.pool_stats, _default)
dlq_stats = default_function(ops.dlq_stats, _default)
list_job_types = default_function(ops.list_job_types, _default)
get_job_type = default_function(ops.get_job_type, _default)
build_job_type = default_function(ops.build_job_type, _default)
create_session = default_function(_sessions.create_session, _default)
run_in_session = default_function(_sessions.run_in_session, _default)
get_session = default_function(_sessions.get_session, _default)
list_sessions = default_function(_sessions.list_sessions, _default)
delete_session = default_function(_sessions.delete_session, _default)
