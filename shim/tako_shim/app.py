"""The aiohttp application: thin handlers (parse -> backend call -> serialize) and the route table.

``create_app(settings, backend)`` builds it; the backend is started in ``cleanup_ctx`` and ``/health``
answers 503 until it is ready. All errors become JSON at one place (``middleware.boundary``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tako_shim import middleware
from tako_shim.backends.base import Backend, Overrides, RecordFilter
from tako_shim.config import Settings
from tako_shim.errors import NotFound, Unauthorized, WaitTimeout
from tako_shim.guards import browser_guard, content_disposition, read_body
from tako_shim.listing import page_items
from tako_shim.middleware import (
    CORRELATION_ID_KEY,
    LIMITER_KEY,
    SETTINGS_KEY,
    TENANT_KEY,
    UNAUTHORIZED,
    FixedWindowLimiter,
    RequestValidationFailed,
)
from tako_shim.openapi import RouteSpec, build_openapi
from tako_shim.params import DeadLetterQuery, ListQuery, ResultQuery, ViewQuery
from tako_vm.models.wire import (
    AsyncExecuteResponse,
    CancelResponse,
    DeadLetterEntry,
    DLQStatsResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionRecord,
    ExecutionRecordFull,
    ForkRequest,
    HealthResponse,
    JobStatusResponse,
    JobTypeResponse,
    PaginatedResponse,
    QueueStatsResponse,
    RerunRequest,
)

BACKEND_KEY = web.AppKey("backend", Backend)
READY_KEY = web.AppKey("ready", dict)
OPENAPI_KEY = web.AppKey("openapi", dict)
SYNC_WAIT_MARGIN_SECONDS = 60
Model = TypeVar("Model", bound=BaseModel)


# -- parsing helpers ---------------------------------------------------------------------------------


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


def _ctx(request: web.Request) -> tuple[Backend, str]:
    tenant = request[TENANT_KEY]
    if tenant is None:  # only the auth-exempt paths have no tenant, and they never get here: fail closed
        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return request.app[BACKEND_KEY], tenant


# -- handlers ------------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    if not request.app[READY_KEY].get("ready"):
        return web.json_response({"status": "starting", "detail": "Server is not ready yet"}, status=503)
    return reply(await request.app[BACKEND_KEY].health())


async def execute_sync(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    body = await parse_body(request, ExecuteRequest)
    submission = await backend.prepare(tenant, backend.resolver.resolve(body, request[CORRELATION_ID_KEY]))
    started = time.monotonic()
    submitted = await backend.submit(tenant, submission)
    wait = submission.timeout + submission.startup_timeout + SYNC_WAIT_MARGIN_SECONDS
    record = await backend.wait_for(tenant, submitted.job_id, wait)
    if record is None:
        raise WaitTimeout("Timeout waiting for job")
    elapsed = record.duration_ms / 1000 if record.duration_ms is not None else time.monotonic() - started
    return reply(
        ExecuteResponse(
            success=record.status == "succeeded",
            output=record.output,
            execution_time=elapsed,
            stdout=record.stdout,
            stderr=record.stderr,
            exit_code=record.exit_code,
            error=record.error.message if record.error else None,
            job_type=record.job_type,
            execution_id=record.execution_id,
            runtime=record.runtime,
        )
    )


async def execute_async(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    body = await parse_body(request, ExecuteRequest)
    submission = await backend.prepare(tenant, backend.resolver.resolve(body, request[CORRELATION_ID_KEY]))
    submitted = await backend.submit(tenant, submission)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def job_status(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    return reply(await backend.get_status(tenant, request.match_info["job_id"]))


async def job_result(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    query = parse_query(request, ResultQuery)
    job_id = request.match_info["job_id"]
    if query.wait:
        record = await backend.wait_for(tenant, job_id, query.timeout)
        if record is None:
            raise WaitTimeout("Timeout waiting for job")
    else:
        record = await backend.get_record(tenant, job_id)
    return await reply_off_loop(record_view(record, query.view))


async def cancel_job(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    job_id = request.match_info["job_id"]
    await backend.cancel(tenant, job_id)
    return reply(CancelResponse(job_id=job_id))


async def rerun_job(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    body = await parse_body(request, RerunRequest, empty_ok=True)
    overrides = Overrides(job_type=body.job_type, timeout=body.timeout)
    submitted = await backend.rerun(tenant, request.match_info["job_id"], overrides)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def fork_job(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    body = await parse_body(request, ForkRequest)
    overrides = Overrides(code=body.code, job_type=body.job_type, timeout=body.timeout)
    submitted = await backend.fork(tenant, request.match_info["job_id"], overrides)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def artifact(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    found = await backend.get_artifact(
        tenant, request.match_info["job_id"], request.match_info["artifact_name"]
    )
    etag = f'"{found.sha256}"'
    headers = {
        "ETag": etag,
        "Content-Disposition": content_disposition(found.name),
        "Cache-Control": "private, max-age=0, must-revalidate",
    }
    if etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")} or (
        request.headers.get("If-None-Match", "").strip() == "*"
    ):
        return web.Response(status=304, headers=headers)
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(found.content))
        return web.Response(status=200, headers=headers, content_type=found.content_type)
    return web.Response(body=found.content, headers=headers, content_type=found.content_type)


async def list_executions(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    query = parse_query(request, ListQuery)
    status = "queued" if query.status == "pending" else query.status
    settings = request.app[SETTINGS_KEY]
    page = await backend.list_records(
        tenant,
        RecordFilter(
            status=status,
            job_type=query.job_type,
            limit=query.limit,
            offset=query.offset,
            inline_output_bytes=settings.list_inline_output_bytes,
        ),
    )
    views = [record_view(r, query.view) for r in page.records]
    items, cut = await asyncio.to_thread(
        page_items, views, page.omitted_outputs, settings.list_max_response_bytes
    )
    return await reply_off_loop(
        PaginatedResponse(
            items=items,
            limit=query.limit,
            offset=query.offset,
            has_more=page.has_more or cut,
            count=len(items),
        )
    )


async def get_execution(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    query = parse_query(request, ViewQuery)
    try:
        record = await backend.get_record(tenant, request.match_info["execution_id"])
    except NotFound:
        raise NotFound("Execution not found") from None
    return await reply_off_loop(record_view(record, query.view))


async def list_job_types(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    types = await backend.job_types(tenant)
    return web.json_response([t.model_dump(mode="json") for t in types])


async def get_job_type(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    name = request.match_info["name"]
    for job_type in await backend.job_types(tenant):
        if job_type.name == name:
            return reply(job_type)
    raise NotFound(f"Job type '{name}' not found")


async def pool_stats(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    return reply(await backend.pool_stats(tenant))


async def dlq_stats(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    counts = Counter(r.error.type for r in await backend.dead_letters(tenant) if r.error is not None)
    return reply(DLQStatsResponse(total=sum(counts.values()), by_error_type=dict(counts)))


async def dlq_list(request: web.Request) -> web.Response:
    backend, tenant = _ctx(request)
    query = parse_query(request, DeadLetterQuery)
    records = await backend.dead_letters(tenant, query.error_type)
    window = records[query.offset : query.offset + query.limit]
    items = [
        DeadLetterEntry(
            id=r.execution_id,
            job_id=r.execution_id,
            job_data={"job_type": r.job_type, "code_hash": r.code_hash, "input_hash": r.input_hash},
            error_type=r.error.type if r.error else "unknown",
            error_message=r.error.message if r.error else "",
            created_at=r.created_at,
        ).model_dump(mode="json")
        for r in window
    ]
    return reply(
        PaginatedResponse(
            items=items,
            limit=query.limit,
            offset=query.offset,
            has_more=len(records) > query.offset + query.limit,
            count=len(items),
        )
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


ROUTES: list[RouteSpec] = [
    RouteSpec("GET", "/health", health, "Liveness and runtime information", response=HealthResponse),
    RouteSpec(
        "POST",
        "/execute",
        execute_sync,
        "Run code and wait for the result (through the same queue as async jobs)",
        body=ExecuteRequest,
        response=ExecuteResponse,
        errors={409: "Idempotency conflict", 503: "Queue full"},
    ),
    RouteSpec(
        "POST",
        "/execute/async",
        execute_async,
        "Submit code and return at once",
        body=ExecuteRequest,
        response=AsyncExecuteResponse,
        errors={409: "Idempotency key reused with different payload", 503: "Queue full"},
    ),
    RouteSpec(
        "GET", "/jobs/{job_id}", job_status, "Job status", response=JobStatusResponse, errors={404: "Unknown"}
    ),
    RouteSpec(
        "GET",
        "/jobs/{job_id}/result",
        job_result,
        "Job record; long-poll with wait=true",
        response=ExecutionRecordFull,
        query=ResultQuery,
        errors={404: "Job not found", 408: "Timeout waiting for job"},
    ),
    RouteSpec(
        "POST",
        "/jobs/{job_id}/cancel",
        cancel_job,
        "Cancel a queued or running job",
        response=CancelResponse,
        errors={404: "Job not found or already completed"},
    ),
    RouteSpec(
        "POST",
        "/jobs/{job_id}/rerun",
        rerun_job,
        "Run the same code and input again",
        body=RerunRequest,
        response=AsyncExecuteResponse,
        errors={400: "Parent not finished", 404: "Job not found", 503: "Queue full"},
    ),
    RouteSpec(
        "POST",
        "/jobs/{job_id}/fork",
        fork_job,
        "Run new code on the same input",
        body=ForkRequest,
        response=AsyncExecuteResponse,
        errors={404: "Job not found", 503: "Queue full"},
    ),
    RouteSpec(
        "GET",
        "/jobs/{job_id}/artifacts/{artifact_name}",
        artifact,
        "Download an output file (ETag = quoted sha256; If-None-Match -> 304)",
        raw_response="application/octet-stream",
        errors={400: "Invalid artifact path", 404: "Artifact not found"},
    ),
    RouteSpec(
        "HEAD",
        "/jobs/{job_id}/artifacts/{artifact_name}",
        artifact,
        "Artifact headers only",
        raw_response="application/octet-stream",
        errors={404: "Artifact not found"},
    ),
    RouteSpec(
        "GET",
        "/executions",
        list_executions,
        "Execution history, newest first",
        response=PaginatedResponse,
        query=ListQuery,
    ),
    RouteSpec(
        "GET",
        "/executions/{execution_id}",
        get_execution,
        "One execution record",
        response=ExecutionRecordFull,
        query=ViewQuery,
        errors={404: "Execution not found"},
    ),
    RouteSpec(
        "GET", "/job-types", list_job_types, "Job types", response=JobTypeResponse, response_is_list=True
    ),
    RouteSpec(
        "GET",
        "/job-types/{name}",
        get_job_type,
        "One job type",
        response=JobTypeResponse,
        errors={404: "Unknown"},
    ),
    RouteSpec("GET", "/pool/stats", pool_stats, "Queue statistics", response=QueueStatsResponse),
    RouteSpec(
        "GET", "/dlq/stats", dlq_stats, "Infrastructure failures by error type", response=DLQStatsResponse
    ),
    RouteSpec(
        "GET",
        "/dlq",
        dlq_list,
        "Infrastructure failures (a view over failed records)",
        response=PaginatedResponse,
        query=DeadLetterQuery,
    ),
    RouteSpec("GET", "/openapi.json", openapi, "This document"),
]


def create_app(settings: Settings, backend: Backend) -> web.Application:
    app = web.Application(
        client_max_size=settings.api_max_payload_bytes,
        middlewares=[
            middleware.boundary,
            browser_guard(settings),
            middleware.payload_cap,
            middleware.rate_limit,
            middleware.authenticate,
        ],
    )
    app[SETTINGS_KEY] = settings
    app[BACKEND_KEY] = backend
    app[READY_KEY] = {"ready": False}
    app[LIMITER_KEY] = FixedWindowLimiter(
        settings.api_rate_limit_requests, settings.api_rate_limit_window_seconds
    )
    app[OPENAPI_KEY] = build_openapi(ROUTES)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)

    async def backend_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await backend.start()
        app[READY_KEY]["ready"] = True
        yield
        app[READY_KEY]["ready"] = False
        await backend.close()

    app.cleanup_ctx.append(backend_lifecycle)
    return app
