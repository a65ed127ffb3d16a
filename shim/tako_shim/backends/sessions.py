"""The interface of a backend's session service (``backend.sessions``); ``local`` and ``kubernetes``
implement it and ``tako_shim.http.sessions`` calls it.

Rules every implementation keeps (docs/sessions.md): a session of another tenant is ``NotFound``; an
ended one is ``Gone`` naming its end reason; the per-tenant cap is ``RateLimited`` naming
``session_max_per_tenant``; calls on one session run one at a time, in arrival order; an idempotency
key with the same payload returns the first answer, with another payload ``Conflict``; a call made
with a key has the execution id ``execution_id_for_key(session_id, key)`` (known before it runs).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from tako_shim.backends.events import Cursor, JobEvent
from tako_vm.models.sessions import CreateSessionRequest, SessionExecuteRequest, SessionExecution, SessionInfo


class SessionService(Protocol):
    async def create(self, tenant: str, body: CreateSessionRequest) -> tuple[SessionInfo, bool]:
        """(the session, True if created; False for an idempotent replay)."""
        ...

    async def get(self, tenant: str, session_id: str) -> SessionInfo: ...

    async def list_sessions(self, tenant: str) -> list[SessionInfo]: ...

    async def execute(
        self, tenant: str, session_id: str, body: SessionExecuteRequest, idempotency_key: str | None
    ) -> SessionExecution: ...

    async def delete(self, tenant: str, session_id: str) -> None: ...

    def events(
        self, tenant: str, session_id: str, execution_id: str, cursor: Cursor
    ) -> AsyncGenerator[JobEvent, None]:
        """A call's event stream beyond ``cursor`` (live while it runs, then its record); NotFound for
        another tenant's session or an unknown execution."""
        ...
