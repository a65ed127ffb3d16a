"""What every route module shares: the application keys, body/query parsing, the tenant context, replies.

Handlers stay thin: parse (``parse_body``/``parse_query``) -> one backend call -> ``reply`` (or
``reply_off_loop`` for bodies that can be large).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tako_shim.backends.base import Backend
from tako_shim.errors import Unauthorized
from tako_shim.http.guards import read_body
from tako_shim.http.middleware import SETTINGS_KEY, TENANT_KEY, UNAUTHORIZED, RequestValidationFailed
from tako_vm.models.wire import ExecutionRecord, ExecutionRecordFull

BACKEND_KEY = web.AppKey("backend", Backend)
READY_KEY = web.AppKey("ready", dict)
OPENAPI_KEY = web.AppKey("openapi", dict)
Model = TypeVar("Model", bound=BaseModel)


async def parse_body(request: web.Request, model: type[Model], *, empty_ok: bool = False) -> Model:
    raw = await read_body(request, request.app[SETTINGS_KEY].server_body_timeout_seconds)
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = {
            "type": "json_invalid",
            "loc": [],
            "msg": f"Invalid JSON: body is not UTF-8 ({exc.reason})",
        }
        raise RequestValidationFailed("body", [problem]) from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise RequestValidationFailed("body", exc) from None


def parse_query(request: web.Request, model: type[Model]) -> Model:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise RequestValidationFailed("query", exc) from None


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


async def reply_off_loop(model: BaseModel) -> web.Response:
    """``reply`` for bodies that can be large (records, history pages): serialised in a worker thread
    so a big record does not hold the event loop (and ``/health``) while it is encoded."""
    body = await asyncio.to_thread(model.model_dump_json)
    return web.Response(body=body.encode(), content_type="application/json")


def record_view(record: ExecutionRecordFull, view: str | None) -> ExecutionRecord:
    return record if view == "full" else record.slim()


def backend_and_tenant(request: web.Request) -> tuple[Backend, str]:
    tenant = request[TENANT_KEY]
    if tenant is None:  # only the auth-exempt paths have no tenant, and they never get here: fail closed
        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return request.app[BACKEND_KEY], tenant
