"""`Client` (blocking, httpx.Client) and `AsyncClient` (asyncio, httpx.AsyncClient).

Both are thin: every method is generated from one operation in `tako_vm._operations`, and
`_drive` runs its plan through the shared engine (`tako_vm._core.steps`), doing only what a
transport must do itself: send a request, sleep between attempts. Retries resend the same
headers (same correlation id) and the same body (same idempotency key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Generic, Self, TypeVar

import httpx

from tako_vm import _core as core
from tako_vm import _operations as ops
from tako_vm import _sessions as sessions
from tako_vm._stream import StreamEvent, astream_events, session_events_call, stream_events
from tako_vm._surface import async_method, sync_method

T = TypeVar("T")
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)
SleepT = TypeVar("SleepT", Callable[[float], None], Callable[[float], Awaitable[None]])


class _BaseClient(Generic[HttpT, TransportT, SleepT]):
    """The configuration and the httpx client; the subclasses differ only in how they perform steps."""

    def __init__(
        self,
        base_url: str = core.DEFAULT_BASE_URL,
        timeout: float = 30,
        headers: Mapping[str, str] | None = None,
        session: HttpT | None = None,
        connect_timeout: float = 10.0,
        correlation_id: str | None = None,
        *,
        api_key: str | None = None,
        max_retries: int = 2,
        transport: TransportT | None = None,
        sleep: SleepT | None = None,
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
        self._http: HttpT = session if session is not None else self._new_http(transport)
        self._sleep: SleepT = sleep if sleep is not None else self._default_sleep()

    def _new_http(self, transport: TransportT | None) -> HttpT:
        raise NotImplementedError

    def _default_sleep(self) -> SleepT:
        raise NotImplementedError


class Client(_BaseClient[httpx.Client, httpx.BaseTransport, Callable[[float], None]]):
    """A blocking client. Safe to share between threads (httpx.Client is)."""

    def _new_http(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(transport=transport)

    def _default_sleep(self) -> Callable[[float], None]:
        return time.sleep

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drive(self, plan: core.Plan[T]) -> T:
        running = core.steps(self.config, plan)
        step = core.advance(running, None)
        while not isinstance(step, core.Done):
            step = core.advance(running, self._perform(step))
        return step.value

    def _perform(self, step: core.Step) -> core.Outcome:
        if isinstance(step, core.Sleep):
            self._sleep(step.seconds)
            return None
        try:
            return self._http.send(core.build_request(self._http, self.config, step.call, step.headers))
        except httpx.RequestError as exc:
            return exc

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """The job's live events (`tako_vm._stream`): status, stdout/stderr chunks, then the result."""
        return stream_events(self._http, self.config, job_id, last_event_id, self._sleep)

    def stream_session(
        self, session_id: str, execution_id: str, *, last_event_id: str | None = None
    ) -> Iterator[StreamEvent]:
        """A session call's live events (`GET /sessions/{id}/executions/{execution_id}/events`)."""
        call = session_events_call(session_id, execution_id)
        return stream_events(self._http, self.config, execution_id, last_event_id, self._sleep, call)

    submit_code = sync_method(ops.submit_code)
    submit = sync_method(ops.submit)
    execute = sync_method(ops.execute)
    send_raw = sync_method(ops.send_raw)
    send = sync_method(ops.send)
    get_status = sync_method(ops.get_status)
    get_result = sync_method(ops.get_result)
    cancel = sync_method(ops.cancel)
    rerun = sync_method(ops.rerun)
    fork = sync_method(ops.fork)
    download_artifact = sync_method(ops.download_artifact)
    list_executions = sync_method(ops.list_executions)
    get_execution = sync_method(ops.get_execution)
    health = sync_method(ops.health)
    pool_stats = sync_method(ops.pool_stats)
    dlq_stats = sync_method(ops.dlq_stats)
    list_job_types = sync_method(ops.list_job_types)
    get_job_type = sync_method(ops.get_job_type)
    build_job_type = sync_method(ops.build_job_type)
    create_session = sync_method(sessions.create_session)
    run_in_session = sync_method(sessions.run_in_session)
    get_session = sync_method(sessions.get_session)
    list_sessions = sync_method(sessions.list_sessions)
    delete_session = sync_method(sessions.delete_session)


TakoVM = Client
"""The 0.3.0 name of the blocking client."""


class AsyncClient(
    _BaseClient[httpx.AsyncClient, httpx.AsyncBaseTransport, Callable[[float], Awaitable[None]]]
):
    """The asyncio client: the same methods as `Client`, as coroutines; never blocks the event loop."""

    def _new_http(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport)

    def _default_sleep(self) -> Callable[[float], Awaitable[None]]:
        return asyncio.sleep

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _drive(self, plan: core.Plan[T]) -> T:
        running = core.steps(self.config, plan)
        step = core.advance(running, None)
        while not isinstance(step, core.Done):
            step = core.advance(running, await self._perform(step))
        return step.value

    async def _perform(self, step: core.Step) -> core.Outcome:
        if isinstance(step, core.Sleep):
            await self._sleep(step.seconds)
            return None
        try:
            return await self._http.send(core.build_request(self._http, self.config, step.call, step.headers))
        except httpx.RequestError as exc:
            return exc

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[StreamEvent]:
        """The job's live events as an async iterator (see `Client.stream`)."""
        return astream_events(self._http, self.config, job_id, last_event_id, self._sleep)

    def stream_session(
        self, session_id: str, execution_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        """A session call's live events as an async iterator (see `Client.stream_session`)."""
        call = session_events_call(session_id, execution_id)
        return astream_events(self._http, self.config, execution_id, last_event_id, self._sleep, call)

    submit_code = async_method(ops.submit_code)
    submit = async_method(ops.submit)
    execute = async_method(ops.execute)
    send_raw = async_method(ops.send_raw)
    send = async_method(ops.send)
    get_status = async_method(ops.get_status)
    get_result = async_method(ops.get_result)
    cancel = async_method(ops.cancel)
    rerun = async_method(ops.rerun)
    fork = async_method(ops.fork)
    download_artifact = async_method(ops.download_artifact)
    list_executions = async_method(ops.list_executions)
    get_execution = async_method(ops.get_execution)
    health = async_method(ops.health)
    pool_stats = async_method(ops.pool_stats)
    dlq_stats = async_method(ops.dlq_stats)
    list_job_types = async_method(ops.list_job_types)
    get_job_type = async_method(ops.get_job_type)
    build_job_type = async_method(ops.build_job_type)
    create_session = async_method(sessions.create_session)
    run_in_session = async_method(sessions.run_in_session)
    get_session = async_method(sessions.get_session)
    list_sessions = async_method(sessions.list_sessions)
    delete_session = async_method(sessions.delete_session)
