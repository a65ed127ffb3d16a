"""Stateful sessions in the SDK: the session operations (plans, like every other operation) and
`Session`/`AsyncSession`, context managers over one server-side session (docs/sessions.md).

    with tako_vm.Session() as s:
        s.run("import math; r = 2")
        print(s.run("math.pi * r ** 2").result)     # '12.566370614359172'

The retry discipline is the jobs' one: creating a session and running code always carry an
idempotency key (created here when none is given), so a retried request after a lost answer returns
the first answer instead of creating a second session or running a cell twice.
"""

from __future__ import annotations

import contextlib
from typing import Any, Self

import httpx

from tako_vm import _core as core
from tako_vm._core import Plan
from tako_vm.errors import NotFoundError, SessionEndedError
from tako_vm.models.sessions import SessionExecution, SessionInfo, SessionList

EXECUTE_READ_MARGIN = 60.0  # over the cell's timeout: the interrupt grace, a resume from disk, the network
DEFAULT_EXECUTE_READ_TIMEOUT = 930.0  # no timeout given: the server's default applies (at most max_timeout)
CREATE_READ_TIMEOUT = 660.0  # requirements are installed before the session is ready


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
        self, code: str, timeout: int | None = None, *, idempotency_key: str | None = None
    ) -> SessionExecution:
        """Run a cell; returns the typed record (status, stdout, stderr, result, error, duration_ms)."""
        return self._client()._drive(
            run_in_session(self.session_id, code, timeout=timeout, idempotency_key=idempotency_key)
        )

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
    ) -> SessionExecution:
        return await self._client()._drive(
            run_in_session(self.session_id, code, timeout=timeout, idempotency_key=idempotency_key)
        )

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
