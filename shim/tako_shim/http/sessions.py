"""Routes of the session resource: create, list, show, execute in, delete (docs/sessions.md).

Handlers are thin: parse -> one call on the backend's session service (``backend.sessions``) -> reply.
A backend without sessions answers 501.
"""

from __future__ import annotations

import re

from aiohttp import web

from tako_shim.backends.sessions import SessionService
from tako_shim.errors import ShimError
from tako_shim.http.common import backend_and_tenant, parse_body, reply
from tako_shim.http.middleware import RequestValidationFailed
from tako_shim.http.openapi import RouteSpec
from tako_vm.models.sessions import (
    CreateSessionRequest,
    SessionExecuteRequest,
    SessionExecution,
    SessionInfo,
    SessionList,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


class NotImplementedByBackend(ShimError):
    status = 501


def session_service(request: web.Request) -> tuple[SessionService, str]:
    backend, tenant = backend_and_tenant(request)
    service: SessionService | None = getattr(backend, "sessions", None)
    if service is None:
        raise NotImplementedByBackend(f"The {backend.name} backend does not offer sessions")
    return service, tenant


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _KEY.match(key):
        problem = {
            "type": "string_pattern_mismatch",
            "loc": ["header", IDEMPOTENCY_HEADER],
            "msg": "Idempotency-Key must be 8-128 characters of [A-Za-z0-9_-]",
            "input": key[:200],
        }
        raise RequestValidationFailed("header", [problem])
    return key


async def create_session(request: web.Request) -> web.Response:
    service, tenant = session_service(request)
    body = await parse_body(request, CreateSessionRequest, empty_ok=True)
    header_key = _idempotency_key(request)
    if header_key and not body.idempotency_key:
        body = body.model_copy(update={"idempotency_key": header_key})
    info, created = await service.create(tenant, body)
    return reply(info, status=201 if created else 200)


async def list_sessions(request: web.Request) -> web.Response:
    service, tenant = session_service(request)
    items = await service.list_sessions(tenant)
    return reply(SessionList(items=items, count=len(items)))


async def get_session(request: web.Request) -> web.Response:
    service, tenant = session_service(request)
    return reply(await service.get(tenant, request.match_info["session_id"]))


async def execute_in_session(request: web.Request) -> web.Response:
    service, tenant = session_service(request)
    body = await parse_body(request, SessionExecuteRequest)
    key = _idempotency_key(request)
    return reply(await service.execute(tenant, request.match_info["session_id"], body, key))


async def delete_session(request: web.Request) -> web.Response:
    service, tenant = session_service(request)
    await service.delete(tenant, request.match_info["session_id"])
    return web.Response(status=204)


GONE = "Session has ended (the detail names the reason)"
ROUTES: list[RouteSpec] = [
    RouteSpec(
        "POST", "/sessions", create_session, "Start a stateful session (one gVisor sandbox)",
        body=CreateSessionRequest, response=SessionInfo,
        errors={409: "Idempotency key reused with different payload", 429: "Too many open sessions",
                501: "Backend without sessions", 503: "Sandbox unavailable"},
    ),
    RouteSpec("GET", "/sessions", list_sessions, "The caller's sessions", response=SessionList),
    RouteSpec(
        "GET", "/sessions/{session_id}", get_session, "Session status (ended ones too, with end_reason)",
        response=SessionInfo, errors={404: "Session not found"},
    ),
    RouteSpec(
        "POST", "/sessions/{session_id}/execute", execute_in_session,
        "Run code in the session (state kept; result = repr of the last expression)",
        body=SessionExecuteRequest, response=SessionExecution,
        errors={404: "Session not found", 409: "Idempotency key reused with different payload", 410: GONE},
    ),
    RouteSpec(
        "DELETE", "/sessions/{session_id}", delete_session, "End the session (204)",
        errors={404: "Session not found", 410: GONE},
    ),
]  # fmt: skip
