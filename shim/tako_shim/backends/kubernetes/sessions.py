"""Sessions on the kubernetes backend (``backend.sessions``): each one a ``PythonSession`` object.

- ``POST /sessions`` creates the PythonSession in the tenant's namespace (refused with 429 naming
  ``session_max_per_tenant`` when the tenant has that many open); the operator builds its gVisor Pod,
  NetworkPolicy (its spec carries only the sha256 of the session's token).
- ``POST /sessions/{id}/execute`` waits until the operator reports the session Ready (the Pod's
  address is in the status), derives the session's token (HMAC of ``session_token_key``, shared by the
  replicas, and the session's namespace/name; the cluster holds only its sha256) and POSTs the code to
  the session server in the Pod. Nothing is kept in this replica's memory: any shim replica serves any
  session, and the Pod runs its calls one at a time, in arrival order. After each call it records the
  runner's execution count and the time on the PythonSession (annotations, mirrored into the status by
  the operator) and posts an ``Executed`` Event on it, and writes the call's execution record: a
  ConfigMap owned by the session (``session_translate.record_configmap``; a deterministic name, so a
  replay creates nothing twice), which ``GET /executions`` lists from any replica (``records``).
- A cell that ignores its interrupt for ``session_interrupt_grace_seconds`` after its timeout gets the
  session ended (``killed_after_timeout``: the shim asks, the operator deletes the Pod).
- ``DELETE`` asks the operator to end the session (reason ``deleted``); another tenant's session is 404;
  an ended one is 410 naming its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from tako_shim.backends.events import Cursor, JobEvent, finish
from tako_shim.backends.kubernetes import session_live
from tako_shim.backends.kubernetes import session_translate as st
from tako_shim.backends.kubernetes.api import KubeApi, KubeApiError
from tako_shim.errors import Conflict, Gone, InvalidRequest, NotFound, RateLimited, Unavailable
from tako_vm.models.sessions import (
    CreateSessionRequest,
    SessionExecuteRequest,
    SessionExecution,
    SessionInfo,
    execution_id_for_key,
    session_gone_detail,
)
from tako_vm.models.wire import ExecutionRecordFull

if TYPE_CHECKING:
    from tako_shim.backends.kubernetes.backend import KubernetesBackend

SESSIONS_PATH = "/apis/takovm.dev/v1alpha1/namespaces/{namespace}/pythonsessions"
EVENTS_PATH = "/api/v1/namespaces/{namespace}/events"
CONFIGMAPS_PATH = "/api/v1/namespaces/{namespace}/configmaps"
log = logging.getLogger("tako_shim.sessions")
NOT_FOUND = "Session not found"
EXECUTION_NOT_FOUND = "Execution not found"
IDEMPOTENCY_CONFLICT = "Idempotency key reused with different payload"
READY_POLL_SECONDS = 0.2
END_WAIT_SECONDS = 10.0  # after a dropped call: how long to wait for the operator to say why


def _failure(exc: KubeApiError) -> Exception:
    """The contract's error for a failed API call (the backend's mapping; imported here, not at the
    top, because the backend imports this module)."""
    from tako_shim.backends.kubernetes.backend import api_failure

    return api_failure(exc)


class KubeSessions:
    def __init__(self, backend: KubernetesBackend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self._http: aiohttp.ClientSession | None = None
        self.key = backend.settings.session_token_key or secrets.token_hex(32)
        if backend.settings.session_token_key is None:
            log.warning(
                "session_token_key is not set: sessions use a random key of this process (another replica, "
                "or this one after a restart, cannot reach them); the Helm chart sets one"
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def api(self) -> KubeApi:
        return self.backend.api

    def _path(self, template: str, namespace: str, name: str | None = None) -> str:
        path = template.format(namespace=quote(namespace, safe=""))
        return f"{path}/{quote(name, safe='')}" if name else path

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return await self.api._request(method, path, **kwargs)
        except KubeApiError as exc:
            raise _failure(exc) from None

    async def _get_object(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.api._request("GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise _failure(exc) from None

    async def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch of the PythonSession (only its annotations: the status is the operator's)."""
        path = self._path(SESSIONS_PATH, namespace, name)
        await self._request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    # -- reads -----------------------------------------------------------------------------------------

    async def _session(self, tenant: str, session_id: str) -> tuple[str, dict[str, Any]]:
        """(namespace, object); ``NotFound`` for an unknown id or another tenant's session."""
        if not st.is_session_id(session_id):
            raise NotFound(NOT_FOUND)
        namespace = self.backend._namespace(tenant)
        obj = await self._get_object(self._path(SESSIONS_PATH, namespace, session_id))
        if obj is None or st.tenant_of(obj) != tenant:
            raise NotFound(NOT_FOUND)
        return namespace, obj

    async def _open(self, tenant: str, session_id: str) -> tuple[str, dict[str, Any]]:
        namespace, obj = await self._session(tenant, session_id)
        reason = st.end_reason(obj)
        if reason is not None:
            raise Gone(session_gone_detail(session_id, reason))
        return namespace, obj

    async def get(self, tenant: str, session_id: str) -> SessionInfo:
        return st.info_from_session((await self._session(tenant, session_id))[1])

    async def _tenant_sessions(self, tenant: str) -> list[dict[str, Any]]:
        page = await self._request("GET", self._path(SESSIONS_PATH, self.backend._namespace(tenant)))
        return [obj for obj in page.get("items") or [] if st.tenant_of(obj) == tenant]

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        infos = [st.info_from_session(obj) for obj in await self._tenant_sessions(tenant)]
        return sorted(infos, key=lambda info: info.created_at, reverse=True)

    # -- create ----------------------------------------------------------------------------------------

    async def create(self, tenant: str, body: CreateSessionRequest) -> tuple[SessionInfo, bool]:
        s = self.settings
        namespace = self.backend._namespace(tenant)
        name = st.session_name(tenant, body.idempotency_key)
        obj = st.session_object(
            name,
            namespace,
            tenant,
            body,
            token=st.session_token(self.key, namespace, name),
            max_ttl=s.session_max_ttl_seconds,
            max_memory=s.session_max_memory_limit,
            allow_requirements=s.allow_runtime_requirements,
        )
        await self.backend._require_job_type(namespace, obj["spec"]["jobType"])
        if body.requirements:
            await self._require_runtime_requirements(namespace, obj["spec"]["jobType"])
        if body.idempotency_key:
            existing = await self._get_object(self._path(SESSIONS_PATH, namespace, name))
            if existing is not None:
                return self._replay(existing, body), False
        open_now = sum(1 for o in await self._tenant_sessions(tenant) if st.end_reason(o) is None)
        if open_now >= s.session_max_per_tenant:
            raise RateLimited(
                f"Tenant '{tenant}' already has {open_now} open sessions, its limit "
                f"(session_max_per_tenant={s.session_max_per_tenant}). Delete one "
                "(DELETE /sessions/{id}) or wait for one to end.",
                headers={"Retry-After": "5"},
            )
        try:
            created = await self.api._request("POST", self._path(SESSIONS_PATH, namespace), body=obj)
        except KubeApiError as exc:
            if exc.status == 409 and body.idempotency_key:
                existing = await self._get_object(self._path(SESSIONS_PATH, namespace, name))
                if existing is not None:
                    return self._replay(existing, body), False
            raise _failure(exc) from None
        return st.info_from_session(created), True

    async def _require_runtime_requirements(self, namespace: str, job_type: str) -> None:
        """422 unless the PythonJobType allows runtime requirements (the operator's rule for any Pod)."""
        name = job_type.split("@", 1)[0]
        found = await self.backend._job_type_object(namespace, name)
        if not (found or {}).get("spec", {}).get("allowRuntimeRequirements"):
            raise InvalidRequest(
                f"requirements: job type {name!r} does not allow runtime requirements (use a job type "
                "with allowRuntimeRequirements: true, or one whose image has the packages)"
            )

    @staticmethod
    def _replay(existing: dict[str, Any], body: CreateSessionRequest) -> SessionInfo:
        if st.fingerprint_of(existing) != st.fingerprint(body):
            raise Conflict(IDEMPOTENCY_CONFLICT)
        return st.info_from_session(existing)

    # -- execute -----------------------------------------------------------------------------------------

    async def _wait_ready(self, tenant: str, session_id: str) -> tuple[str, dict[str, Any], str]:
        """(namespace, object, address) once the operator reports the session Ready; waits as long as
        the operator gives the session's job type to start (its ``startupTimeoutSeconds``)."""
        started = time.monotonic()
        limit: int | None = None
        while True:
            namespace, obj = await self._open(tenant, session_id)
            address = st.address(obj)
            if address is not None:
                return namespace, obj, address
            if limit is None:
                job_type = str(obj.get("spec", {}).get("jobType") or "default").split("@", 1)[0]
                found = await self.backend._job_type_object(namespace, job_type)
                limit = st.startup_timeout(found, self.settings.default_startup_timeout)
            if time.monotonic() - started > limit:
                raise Unavailable(
                    f"Session {session_id} did not become ready within {limit} s "
                    "(its job type's startupTimeoutSeconds)",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(READY_POLL_SECONDS)

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        return self._http

    async def execute(
        self, tenant: str, session_id: str, body: SessionExecuteRequest, idempotency_key: str | None
    ) -> SessionExecution:
        timeout = body.timeout or self.settings.default_timeout
        if timeout > self.settings.max_timeout:
            raise InvalidRequest(f"timeout: {timeout} exceeds max_timeout {self.settings.max_timeout}")
        namespace, obj, address = await self._wait_ready(tenant, session_id)
        token = st.session_token(self.key, namespace, session_id)
        grace = self.settings.session_interrupt_grace_seconds
        execution_id = str(uuid.uuid4())
        if idempotency_key:  # the client knows this id before it POSTs (docs/api.md)
            execution_id = execution_id_for_key(session_id, idempotency_key)
        payload: dict[str, Any] = {"code": body.code, "timeout": timeout, "execution": execution_id}
        if idempotency_key:
            payload["key"] = idempotency_key
        started = time.monotonic()
        started_at = datetime.now(UTC)
        reply: dict[str, Any] | None = None
        try:
            async with self._client().post(
                f"http://{address}/execute",
                json=payload,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=timeout + grace + 5, connect=10),
            ) as response:
                data = await response.json(content_type=None)
                if response.status == 409:
                    raise Conflict(IDEMPOTENCY_CONFLICT)
                if response.status != 200:
                    raise Unavailable(f"the session's Pod refused the call ({response.status}: {data})")
                reply = data
        except TimeoutError:
            await self._patch(namespace, session_id, st.end_patch(st.KILLED_AFTER_TIMEOUT))
            elapsed = int((time.monotonic() - started) * 1000)
            ended = st.ended_during_call(
                execution_id, session_id, st.KILLED_AFTER_TIMEOUT, elapsed, grace, timeout
            )
            await self._audit(tenant, obj, ended, body.code, started_at, idempotency_key)
            return ended
        except aiohttp.ClientError as exc:
            reason = await self._ended_reason(tenant, session_id)
            elapsed = int((time.monotonic() - started) * 1000)
            if reason is None:
                raise Unavailable(
                    f"could not reach the session's Pod: {exc}", headers={"Retry-After": "1"}
                ) from None
            ended = st.ended_during_call(execution_id, session_id, reason, elapsed, grace, timeout)
            await self._audit(tenant, obj, ended, body.code, started_at, idempotency_key)
            return ended
        assert reply is not None
        elapsed = int((time.monotonic() - started) * 1000)
        number = int(reply.get("number") or 0)
        if number > 0 and not idempotency_key:  # with a key the id is the key's (known to the client)
            execution_id = st.execution_id_for(session_id, number)
        execution = st.execution_from_reply(execution_id, session_id, reply, elapsed)
        if not reply.get("replayed"):
            await self._record(namespace, obj, number, execution)
        # A replay writes its record too: the create is idempotent (a deterministic name), so a call whose
        # first reply was lost before its record was written still gets exactly one.
        await self._audit(tenant, obj, execution, body.code, started_at, idempotency_key)
        return execution

    async def _ended_reason(self, tenant: str, session_id: str) -> str | None:
        """After a dropped call: the end reason once the operator recorded it (OOM, crash), or None."""
        deadline = time.monotonic() + END_WAIT_SECONDS
        while time.monotonic() < deadline:
            _, obj = await self._session(tenant, session_id)
            reason = st.end_reason(obj)
            if reason is not None:
                return reason
            await asyncio.sleep(READY_POLL_SECONDS)
        return None

    async def _record(
        self, namespace: str, obj: dict[str, Any], number: int, execution: SessionExecution
    ) -> None:
        """The execution, visible from the cluster: the count and time on the object, and an Event."""
        name = str(obj["metadata"]["name"])
        now = datetime.now(UTC)
        await self._patch(namespace, name, st.activity_patch(number, now))
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "takovm.dev/v1alpha1",
                "kind": "PythonSession",
                "name": name,
                "namespace": namespace,
                "uid": str(obj["metadata"].get("uid") or ""),
            },
            "reason": "Executed",
            "message": f"Execution {number} ({execution.execution_id}): {execution.status} "
            f"in {execution.duration_ms} ms",
            "type": "Normal",
            "source": {"component": "tako-vm-shim"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(KubeApiError):  # the count is the record; an Event is best effort
            await self.api._request("POST", self._path(EVENTS_PATH, namespace), body=event)

    # -- the audit trail (GET /executions) ----------------------------------------------------------------

    async def _audit(
        self,
        tenant: str,
        obj: dict[str, Any],
        execution: SessionExecution,
        code: str,
        started_at: datetime,
        idempotency_key: str | None,
    ) -> None:
        """The call's execution record: a ConfigMap owned by the session (409: it exists, from the first
        reply of a replayed call). Best effort, logged: the call's answer is the product."""
        record = st.execution_record(
            obj, execution, started_at=started_at, ended_at=datetime.now(UTC), idempotency_key=idempotency_key
        )
        namespace = str(obj["metadata"].get("namespace") or self.backend._namespace(tenant))
        try:
            await self.api._request(
                "POST",
                self._path(CONFIGMAPS_PATH, namespace),
                body=st.record_configmap(obj, tenant, record, code),
            )
        except KubeApiError as exc:
            if exc.status != 409:
                log.warning("could not record session execution %s: %s", execution.execution_id, exc)

    async def records(
        self, tenant: str, session_id: str | None = None, execution_id: str | None = None
    ) -> list[tuple[ExecutionRecordFull, str]]:
        """(record, code) of the tenant's session executions (of one session, or the one with
        ``execution_id``)."""
        if session_id is not None and not st.is_session_id(session_id):
            return []
        if execution_id is not None and not st.is_execution_id(execution_id):
            return []
        selector = st.record_selector(session_id, execution_id)
        try:
            found = await self.api.list_objects(CONFIGMAPS_PATH, self.backend._namespace(tenant), selector)
        except KubeApiError as exc:
            raise _failure(exc) from None
        return st.records_of(found, tenant, session_id, execution_id)

    # -- live output ------------------------------------------------------------------------------------

    async def events(
        self, tenant: str, session_id: str, execution_id: str, cursor: Cursor
    ) -> AsyncGenerator[JobEvent, None]:
        """A call's events beyond ``cursor``: a finished call's from its record, a running (or queued)
        one's from the session Pod (``session_live``), from any replica. NotFound for another tenant's
        session or a call neither has."""
        namespace, obj = await self._session(tenant, session_id)
        if not st.is_execution_id(execution_id):
            raise NotFound(EXECUTION_NOT_FOUND)
        feed = None
        if not await self._recorded(tenant, session_id, execution_id):
            address = st.address(obj) if st.end_reason(obj) is None else None
            if address is not None:
                feed = self._pod_feed(namespace, session_id, execution_id, address)
                if not await feed.poll(0):
                    feed = None  # the Pod does not know it: finished meanwhile, or unknown
            if feed is None and not await self._recorded(tenant, session_id, execution_id):
                raise NotFound(EXECUTION_NOT_FOUND)
        if feed is not None:
            async for event in session_live.stream(feed, session_id, execution_id, cursor):
                yield event
            return
        found = await self.records(tenant, session_id, execution_id)
        execution = st.execution_from_record(found[0][0], session_id)
        for event in finish({"session_id": session_id, "execution_id": execution_id}, execution, cursor):
            yield event

    async def _recorded(self, tenant: str, session_id: str, execution_id: str) -> bool:
        return bool(await self.records(tenant, session_id, execution_id))

    def _pod_feed(
        self, namespace: str, session_id: str, execution_id: str, address: str
    ) -> session_live.PodFeed:
        token = st.session_token(self.key, namespace, session_id)

        async def fetch(after: int, wait: float) -> dict[str, Any] | None:
            query = {"execution": execution_id, "after": str(after), "wait": f"{wait:g}"}
            try:
                async with self._client().get(
                    f"http://{address}/events",
                    params=query,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=aiohttp.ClientTimeout(total=wait + 10, connect=5),
                ) as response:
                    if response.status != 200:
                        return None  # 404: not (or no longer) the Pod's call
                    answer: dict[str, Any] = await response.json(content_type=None)
                    return answer
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None  # the Pod is gone or unreachable: the record (if any) tells the rest

        def build(reply: dict[str, Any]) -> SessionExecution:
            elapsed = reply.get("duration_ms") if isinstance(reply.get("duration_ms"), int) else 0
            return st.execution_from_reply(execution_id, session_id, reply, int(elapsed or 0))

        limit = self.settings.max_stdout_bytes
        return session_live.PodFeed(fetch, {"stdout": limit, "stderr": limit}, build)

    # -- delete ------------------------------------------------------------------------------------------

    async def delete(self, tenant: str, session_id: str) -> None:
        namespace, _ = await self._open(tenant, session_id)
        await self._patch(namespace, session_id, st.end_patch("deleted"))
