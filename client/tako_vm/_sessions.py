"""Stateful sessions in the SDK: the session operations (plans, like every other operation) and
`Session`/`AsyncSession`, context managers over one server-side session (docs/sessions.md).

    with tako_vm.Session() as s:
        s.run("import math; r = 2")
        print(s.run("math.pi * r ** 2").result)     # '12.566370614359172'

The retry discipline is the jobs' one: creating a session and running code always carry an
idempotency key (created here when none is given), so a retried request after a lost answer returns
the first answer instead of creating a second session or running a cell twice.

Live output: the call's execution id follows from its key (`execution_id_for_key`), so
`run(code, on_output=print_chunk)` opens the call's event stream and POSTs at the same time, and
hands each stdout/stderr chunk to the callback as the cell writes it; `stream(execution_id)` reads
any call's events (a finished one's at once). Whatever the stream could not deliver (a backend
without live output answers 501) is handed over from the record at the end, so the callback always
sees the whole output exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import httpx

from tako_vm import _core as core
from tako_vm._core import Plan
from tako_vm._stream import OutputEvent, StreamEvent
from tako_vm.errors import NotFoundError, SessionEndedError, TakoVMError
from tako_vm.models.sessions import SessionExecution, SessionInfo, SessionList, execution_id_for_key

EXECUTE_READ_MARGIN = 60.0  # over the cell's timeout: the interrupt grace, a resume from disk, the network
DEFAULT_EXECUTE_READ_TIMEOUT = 930.0  # no timeout given: the server's default applies (at most max_timeout)
CREATE_READ_TIMEOUT = 660.0  # requirements are installed before the session is ready
REGISTER_POLL_SECONDS = 0.05  # the stream was opened before the server saw the call: ask again
OutputCallback = Callable[[OutputEvent], None]


def _info(response: httpx.Response) -> SessionInfo:
    return SessionInfo.model_validate(core.parse_object(response))


def _execution(response: httpx.Response) -> SessionExecution:
    return SessionExecution.model_validate(core.parse_object(response))


def _listing(response: httpx.Response) -> list[SessionInfo]:
    return SessionList.model_validate(core.parse_object(response)).items


def _nothing(response: httpx.Response) -> None:
    return None


def _path(session_id: str) -> str:
    return f"/sessions/{core._segment(session_id, 'session_id')}"


def create_session(
    *,
    job_type: str | None = None,
    requirements: list[str] | None = None,
    ttl_seconds: int | None = None,
    idle_timeout_seconds: int | None = None,
    memory_limit: str | None = None,
    cpu_limit: float | None = None,
    idempotency_key: str | None = None,
) -> Plan[SessionInfo]:
    """Start a session (`POST /sessions`): one gVisor sandbox whose Python namespace persists."""
    body = core._without_none(
        job_type=job_type,
        requirements=list(requirements) if requirements is not None else None,
        ttl_seconds=ttl_seconds,
        idle_timeout_seconds=idle_timeout_seconds,
        memory_limit=memory_limit,
        cpu_limit=cpu_limit,
        idempotency_key=idempotency_key or core.new_idempotency_key(),
    )
    call = core.Call("POST", "/sessions", _info, body=body, read_timeout=CREATE_READ_TIMEOUT, retryable=True)
    return (yield call)


def run_in_session(
    session_id: str, code: str, *, timeout: int | None = None, idempotency_key: str | None = None
) -> Plan[SessionExecution]:
    """Run `code` in the session (`POST /sessions/{id}/execute`); `result` is the repr of its last
    expression. A failing cell is a record with `status: "failed"`, not an exception; an ended session
    raises `SessionEndedError` (410)."""
    read = timeout + EXECUTE_READ_MARGIN if timeout else DEFAULT_EXECUTE_READ_TIMEOUT
    call = core.Call(
        "POST",
        _path(session_id) + "/execute",
        _execution,
        body=core._without_none(code=code, timeout=timeout),
        read_timeout=read,
        retryable=True,
        headers={"Idempotency-Key": idempotency_key or core.new_idempotency_key()},
    )
    return (yield call)


def get_session(session_id: str) -> Plan[SessionInfo]:
    """A session's status (ended ones too, with `end_reason`)."""
    return (yield core.Call("GET", _path(session_id), _info, retryable=True))


def list_sessions() -> Plan[list[SessionInfo]]:
    """The caller's sessions (`GET /sessions`), newest first."""
    return (yield core.Call("GET", "/sessions", _listing, retryable=True))


def delete_session(session_id: str) -> Plan[None]:
    """End a session (`DELETE /sessions/{id}`); deleting one that already ended is not an error."""
    try:
        yield core.Call("DELETE", _path(session_id), _nothing, retryable=True)
    except SessionEndedError:
        return None  # a retried delete whose first answer was lost lands here


class _Delivered:
    """The output handed to a callback so far, per stream (the record fills in the rest)."""

    def __init__(self, on_output: OutputCallback) -> None:
        self.on_output = on_output
        self.chars = {"stdout": 0, "stderr": 0}
        self.last_event_id: str | None = None

    def seen(self, event: StreamEvent) -> None:
        self.last_event_id = event.id
        if isinstance(event, OutputEvent):
            self.chars[event.type] += len(event.text)
            self.on_output(event)

    def rest(self, record: SessionExecution) -> None:
        """What the stream did not deliver: the rest of each stream of the record."""
        for stream in ("stdout", "stderr"):
            text: str = getattr(record, stream)
            if len(text) > self.chars[stream]:
                self.seen(OutputEvent("", stream, text[self.chars[stream] :]))


def _follow(
    client: Any, session_id: str, execution_id: str, done: Callable[[], bool], out: _Delivered
) -> None:
    """Read the call's events into ``out`` until its result; a 404 before the server saw the call
    (the stream was opened first) is asked again while the call is running."""
    while True:
        try:
            for event in client.stream_session(session_id, execution_id, last_event_id=out.last_event_id):
                out.seen(event)
            return
        except NotFoundError:
            if done():
                return
            client._sleep(REGISTER_POLL_SECONDS)


async def _afollow(
    client: Any, session_id: str, execution_id: str, done: Callable[[], bool], out: _Delivered
) -> None:
    while True:
        try:
            async for event in client.stream_session(
                session_id, execution_id, last_event_id=out.last_event_id
            ):
                out.seen(event)
            return
        except NotFoundError:
            if done():
                return
            await client._sleep(REGISTER_POLL_SECONDS)


def run_streaming(
    client: Any,
    session_id: str,
    code: str,
    on_output: OutputCallback,
    timeout: int | None = None,
    idempotency_key: str | None = None,
) -> SessionExecution:
    """`run_in_session` with the output handed to ``on_output`` as it is written (blocking client):
    the POST runs in a worker thread (with its retries), the stream in this one."""
    key = idempotency_key or core.new_idempotency_key()
    delivered = _Delivered(on_output)
    with ThreadPoolExecutor(1, thread_name_prefix="tako-session-run") as pool:
        plan = run_in_session(session_id, code, timeout=timeout, idempotency_key=key)
        call = pool.submit(client._drive, plan)
        with contextlib.suppress(TakoVMError):  # the stream is a view: the call's answer is the product
            _follow(client, session_id, execution_id_for_key(session_id, key), call.done, delivered)
        record: SessionExecution = call.result()
    delivered.rest(record)
    return record


async def arun_streaming(
    client: Any,
    session_id: str,
    code: str,
    on_output: OutputCallback,
    timeout: int | None = None,  # noqa: ASYNC109 - the cell's time limit (the REST field)
    idempotency_key: str | None = None,
) -> SessionExecution:
    """The asyncio twin of `run_streaming` (the POST is a task beside the stream)."""
    key = idempotency_key or core.new_idempotency_key()
    delivered = _Delivered(on_output)
    plan = run_in_session(session_id, code, timeout=timeout, idempotency_key=key)
    call = asyncio.ensure_future(client._drive(plan))
    try:
        with contextlib.suppress(TakoVMError):
            await _afollow(client, session_id, execution_id_for_key(session_id, key), call.done, delivered)
        record: SessionExecution = await call
    finally:
        call.cancel()
    delivered.rest(record)
    return record


class _SessionBase:
    def __init__(self, client: Any = None, **options: Any) -> None:
        """`client`: a `Client` (sync) or `AsyncClient`; default: the module's default client (sync) or a
        new `AsyncClient()`. `options`: `create_session`'s keywords (job_type, requirements, ttl_seconds,
        idle_timeout_seconds, memory_limit, cpu_limit)."""
        self.client = client
        self.options = options
        self.info: SessionInfo | None = None

    @property
    def session_id(self) -> str:
        if self.info is None:
            raise RuntimeError(
                "the session has not been started (use it as a context manager or call start())"
            )
        return self.info.session_id


class Session(_SessionBase):
    """A stateful session (blocking). Created on `__enter__` (or `start()`), deleted on `__exit__`."""

    def _client(self) -> Any:
        if self.client is None:
            import tako_vm

            self.client = tako_vm._default()
        return self.client

    def start(self) -> SessionInfo:
        self.info = self._client()._drive(create_session(**self.options))
        return self.info

    def run(
        self,
        code: str,
        timeout: int | None = None,
        *,
        idempotency_key: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> SessionExecution:
        """Run a cell; returns the typed record (status, stdout, stderr, result, error, duration_ms).
        ``on_output`` gets each stdout/stderr chunk (an `OutputEvent`) while the cell runs."""
        if on_output is not None:
            client, sid = self._client(), self.session_id
            return run_streaming(client, sid, code, on_output, timeout, idempotency_key)
        return self._client()._drive(
            run_in_session(self.session_id, code, timeout=timeout, idempotency_key=idempotency_key)
        )

    def stream(self, execution_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """A call's events (status, stdout/stderr chunks, result); ``execution_id_for_key(session_id,
        key)`` names a call made with an Idempotency-Key before it returns."""
        return self._client().stream_session(self.session_id, execution_id, last_event_id=last_event_id)

    def refresh(self) -> SessionInfo:
        self.info = self._client()._drive(get_session(self.session_id))
        return self.info

    def close(self) -> None:
        if self.info is not None:
            with contextlib.suppress(NotFoundError):
                self._client()._drive(delete_session(self.session_id))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSession(_SessionBase):
    """The asyncio twin of `Session` (`async with tako_vm.AsyncSession(client) as s: await s.run(...)`)."""

    def _client(self) -> Any:
        if self.client is None:
            from tako_vm._client import AsyncClient

            self.client = AsyncClient()
        return self.client

    async def start(self) -> SessionInfo:
        self.info = await self._client()._drive(create_session(**self.options))
        return self.info

    async def run(
        self,
        code: str,
        timeout: int | None = None,  # noqa: ASYNC109 - the cell's time limit (the REST field), not a scope
        *,
        idempotency_key: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> SessionExecution:
        if on_output is not None:
            client, sid = self._client(), self.session_id
            return await arun_streaming(client, sid, code, on_output, timeout, idempotency_key)
        return await self._client()._drive(
            run_in_session(self.session_id, code, timeout=timeout, idempotency_key=idempotency_key)
        )

    def stream(self, execution_id: str, *, last_event_id: str | None = None) -> AsyncIterator[StreamEvent]:
        """A call's events as an async iterator (see `Session.stream`)."""
        return self._client().stream_session(self.session_id, execution_id, last_event_id=last_event_id)

    async def refresh(self) -> SessionInfo:
        self.info = await self._client()._drive(get_session(self.session_id))
        return self.info

    async def close(self) -> None:
        if self.info is not None:
            with contextlib.suppress(NotFoundError):
                await self._client()._drive(delete_session(self.session_id))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
