# `timeout` in the async methods is the job's time limit (the REST field), not a cancellation scope:
# ruff: noqa: ASYNC109
"""`Client` (blocking, httpx.Client) and `AsyncClient` (asyncio, httpx.AsyncClient).

Both are thin: every method builds a `Call` with the shared core, and `_run` sends it, retrying
as `retry_delay` says with the same headers (same correlation id) and the same body (same
idempotency key) on every attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx

from tako_vm import _core as core
from tako_vm._typed import ExecutionResult, typed_program, typed_result
from tako_vm.errors import ExecutionError, TransportError, WaitTimeoutError

T = TypeVar("T")


def _with_correlation(call: core.Call[T], correlation_id: str | None) -> core.Call[T]:
    return dataclasses.replace(call, correlation_id=correlation_id) if correlation_id else call


def _typed_call(func: Callable[..., Any], call: core.Call[dict[str, Any]]) -> core.Call[ExecutionResult]:
    def parse(response: httpx.Response) -> ExecutionResult:
        return typed_result(func, core.parse_object(response), response.headers.get(core.CORRELATION_HEADER))

    return core.Call(
        call.method,
        call.path,
        parse,
        body=call.body,
        read_timeout=call.read_timeout,
        correlation_id=call.correlation_id,
    )


def _raise_for_failure(result: ExecutionResult) -> Any:
    if not result.success:
        raise ExecutionError(
            result.error or "execution failed",
            stdout=result.stdout,
            stderr=result.stderr,
            exit_code=result.exit_code,
            correlation_id=result.correlation_id,
        )
    return result.output


def _transport_error(call: core.Call[Any], headers: Mapping[str, str], exc: Exception) -> TransportError:
    return TransportError(
        f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}",
        correlation_id=headers.get(core.CORRELATION_HEADER),
    )


class Client:
    """A blocking client. Safe to share between threads (httpx.Client is)."""

    def __init__(
        self,
        base_url: str = core.DEFAULT_BASE_URL,
        timeout: float = 30,
        headers: Mapping[str, str] | None = None,
        session: httpx.Client | None = None,
        connect_timeout: float = 10.0,
        correlation_id: str | None = None,
        *,
        api_key: str | None = None,
        max_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = core.make_config(
            base_url,
            timeout,
            headers,
            connect_timeout,
            correlation_id,
            api_key=api_key,
            max_retries=max_retries,
        )
        self._owns_http = session is None
        self._http = session if session is not None else httpx.Client(transport=transport)
        self._sleep = sleep

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: core.Call[T]) -> T:
        headers = core.request_headers(self.config, call)
        attempt = 0
        while True:
            request = core.build_request(self._http, self.config, call, headers)
            try:
                response = self._http.send(request)
            except httpx.RequestError as exc:
                transient = isinstance(exc, httpx.TransportError)
                delay = core.retry_delay(self.config, call, attempt, None) if transient else None
                if delay is None:
                    raise _transport_error(call, headers, exc) from exc
            else:
                if response.is_success:
                    return call.parse(response)
                delay = core.retry_delay(self.config, call, attempt, response)
                if delay is None:
                    raise core.api_error(response)
            self._sleep(delay)
            attempt += 1

    # -- jobs ------------------------------------------------------------------------------

    def submit_code(
        self,
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
        """Queue `code` and return its job id at once. Retries reuse one idempotency key."""
        call = core.submit_call(
            code,
            input_data,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
            idempotency_key=idempotency_key,
        )
        return self._run(_with_correlation(call, correlation_id))

    def submit(
        self,
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
        """Queue a typed function (see `send`); the result's `output` is the returned dataclass as a dict."""
        code, payload = typed_program(func, input_data)
        return self.submit_code(
            code,
            payload,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )

    def execute(
        self,
        code: str,
        input_data: Mapping[str, Any] | None = None,
        *,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        job_type: str | None = None,
        requirements: Sequence[str] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """Run `code` and wait (`POST /execute`); returns the response dict, `success` false on failure."""
        call = core.execute_call(
            code,
            input_data,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
        )
        return self._run(_with_correlation(call, correlation_id))

    def send_raw(
        self,
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
        """Run a typed function and wait; never raises for a failed execution (see `ExecutionResult`).

        `idempotency_key` is accepted for 0.3.0 compatibility; the sync route ignores it.
        """
        code, payload = typed_program(func, input_data)
        call = core.execute_call(
            code,
            payload,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
        )
        return self._run(_typed_call(func, _with_correlation(call, correlation_id)))

    def send(
        self,
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
        """Run `func(input_data)` in the sandbox; return its dataclass result or raise `ExecutionError`."""
        result = self.send_raw(
            func,
            input_data,
            timeout,
            job_type,
            requirements,
            startup_timeout=startup_timeout,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        return _raise_for_failure(result)

    def get_status(self, job_id: str) -> dict[str, Any]:
        return self._run(core.status_call(job_id))

    def get_result(
        self, job_id: str, *, timeout: float | None = None, view: str | None = None
    ) -> dict[str, Any]:
        """The job's record. A truthy `timeout` waits up to that many seconds for it to finish
        (long-polls of at most 300 s each), then raises `WaitTimeoutError`; without one it returns
        the record in whatever state it is."""
        if not timeout:
            return self._run(core.result_call(job_id, view=view))
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._run(core.result_call(job_id, wait=deadline - time.monotonic(), view=view))
            except WaitTimeoutError:
                if deadline - time.monotonic() < core.MIN_SERVER_WAIT_SECONDS:
                    raise

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._run(core.cancel_call(job_id))

    def rerun(self, job_id: str, *, job_type: str | None = None, timeout: int | None = None) -> str:
        return self._run(core.rerun_call(job_id, job_type=job_type, timeout=timeout))

    def fork(self, job_id: str, code: str, *, job_type: str | None = None, timeout: int | None = None) -> str:
        return self._run(core.fork_call(job_id, code, job_type=job_type, timeout=timeout))

    def download_artifact(self, job_id: str, artifact_name: str) -> bytes:
        return self._run(core.artifact_call(job_id, artifact_name))

    # -- history and server ----------------------------------------------------------------

    def list_executions(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
        view: str | None = None,
    ) -> dict[str, Any]:
        return self._run(
            core.list_executions_call(status=status, job_type=job_type, limit=limit, offset=offset, view=view)
        )

    def get_execution(self, execution_id: str, *, view: str | None = None) -> dict[str, Any]:
        return self._run(core.execution_call(execution_id, view=view))

    def health(self) -> dict[str, Any]:
        return self._run(core.health_call())

    def pool_stats(self) -> dict[str, Any]:
        return self._run(core.pool_stats_call())

    def dlq_stats(self) -> dict[str, Any]:
        return self._run(core.dlq_stats_call())

    def list_job_types(self) -> list[Any]:
        return self._run(core.list_job_types_call())

    def get_job_type(self, name: str) -> dict[str, Any]:
        return self._run(core.job_type_call(name))

    def build_job_type(self, name: str) -> dict[str, Any]:
        return self._run(core.build_job_type_call(name))


TakoVM = Client
"""The 0.3.0 name of the blocking client."""


class AsyncClient:
    """The asyncio client: the same methods as `Client`, as coroutines; never blocks the event loop."""

    def __init__(
        self,
        base_url: str = core.DEFAULT_BASE_URL,
        timeout: float = 30,
        headers: Mapping[str, str] | None = None,
        session: httpx.AsyncClient | None = None,
        connect_timeout: float = 10.0,
        correlation_id: str | None = None,
        *,
        api_key: str | None = None,
        max_retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = core.make_config(
            base_url,
            timeout,
            headers,
            connect_timeout,
            correlation_id,
            api_key=api_key,
            max_retries=max_retries,
        )
        self._owns_http = session is None
        self._http = session if session is not None else httpx.AsyncClient(transport=transport)
        self._sleep = sleep

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: core.Call[T]) -> T:
        headers = core.request_headers(self.config, call)
        attempt = 0
        while True:
            request = core.build_request(self._http, self.config, call, headers)
            try:
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                transient = isinstance(exc, httpx.TransportError)
                delay = core.retry_delay(self.config, call, attempt, None) if transient else None
                if delay is None:
                    raise _transport_error(call, headers, exc) from exc
            else:
                if response.is_success:
                    return call.parse(response)
                delay = core.retry_delay(self.config, call, attempt, response)
                if delay is None:
                    raise core.api_error(response)
            await self._sleep(delay)
            attempt += 1

    async def submit_code(
        self,
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
        call = core.submit_call(
            code,
            input_data,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
            idempotency_key=idempotency_key,
        )
        return await self._run(_with_correlation(call, correlation_id))

    async def submit(
        self,
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
        code, payload = typed_program(func, input_data)
        return await self.submit_code(
            code,
            payload,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )

    async def execute(
        self,
        code: str,
        input_data: Mapping[str, Any] | None = None,
        *,
        timeout: int | None = None,
        startup_timeout: int | None = None,
        job_type: str | None = None,
        requirements: Sequence[str] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        call = core.execute_call(
            code,
            input_data,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
        )
        return await self._run(_with_correlation(call, correlation_id))

    async def send_raw(
        self,
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
        code, payload = typed_program(func, input_data)
        call = core.execute_call(
            code,
            payload,
            timeout=timeout,
            startup_timeout=startup_timeout,
            job_type=job_type,
            requirements=requirements,
        )
        return await self._run(_typed_call(func, _with_correlation(call, correlation_id)))

    async def send(
        self,
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
        result = await self.send_raw(
            func,
            input_data,
            timeout,
            job_type,
            requirements,
            startup_timeout=startup_timeout,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        return _raise_for_failure(result)

    async def get_status(self, job_id: str) -> dict[str, Any]:
        return await self._run(core.status_call(job_id))

    async def get_result(
        self, job_id: str, *, timeout: float | None = None, view: str | None = None
    ) -> dict[str, Any]:
        if not timeout:
            return await self._run(core.result_call(job_id, view=view))
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self._run(core.result_call(job_id, wait=deadline - time.monotonic(), view=view))
            except WaitTimeoutError:
                if deadline - time.monotonic() < core.MIN_SERVER_WAIT_SECONDS:
                    raise

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._run(core.cancel_call(job_id))

    async def rerun(self, job_id: str, *, job_type: str | None = None, timeout: int | None = None) -> str:
        return await self._run(core.rerun_call(job_id, job_type=job_type, timeout=timeout))

    async def fork(
        self, job_id: str, code: str, *, job_type: str | None = None, timeout: int | None = None
    ) -> str:
        return await self._run(core.fork_call(job_id, code, job_type=job_type, timeout=timeout))

    async def download_artifact(self, job_id: str, artifact_name: str) -> bytes:
        return await self._run(core.artifact_call(job_id, artifact_name))

    async def list_executions(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
        view: str | None = None,
    ) -> dict[str, Any]:
        return await self._run(
            core.list_executions_call(status=status, job_type=job_type, limit=limit, offset=offset, view=view)
        )

    async def get_execution(self, execution_id: str, *, view: str | None = None) -> dict[str, Any]:
        return await self._run(core.execution_call(execution_id, view=view))

    async def health(self) -> dict[str, Any]:
        return await self._run(core.health_call())

    async def pool_stats(self) -> dict[str, Any]:
        return await self._run(core.pool_stats_call())

    async def dlq_stats(self) -> dict[str, Any]:
        return await self._run(core.dlq_stats_call())

    async def list_job_types(self) -> list[Any]:
        return await self._run(core.list_job_types_call())

    async def get_job_type(self, name: str) -> dict[str, Any]:
        return await self._run(core.job_type_call(name))

    async def build_job_type(self, name: str) -> dict[str, Any]:
        return await self._run(core.build_job_type_call(name))
