"""Routes of the job resource: submit (sync and async), status, result, cancel, rerun, fork, artifacts."""

from __future__ import annotations

import time

from aiohttp import web

from tako_shim.backends.base import Overrides
from tako_shim.errors import WaitTimeout
from tako_shim.http.common import (
    backend_and_tenant,
    parse_body,
    parse_query,
    record_view,
    reply,
    reply_off_loop,
)
from tako_shim.http.guards import content_disposition
from tako_shim.http.middleware import CORRELATION_ID_KEY
from tako_shim.http.openapi import RouteSpec
from tako_shim.http.params import ResultQuery
from tako_vm.models.wire import (
    AsyncExecuteResponse,
    CancelResponse,
    ExecuteRequest,
    ExecuteResponse,
    ExecutionRecordFull,
    ForkRequest,
    JobStatusResponse,
    RerunRequest,
)

SYNC_WAIT_MARGIN_SECONDS = 60


async def execute_sync(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
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
    backend, tenant = backend_and_tenant(request)
    body = await parse_body(request, ExecuteRequest)
    submission = await backend.prepare(tenant, backend.resolver.resolve(body, request[CORRELATION_ID_KEY]))
    submitted = await backend.submit(tenant, submission)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def job_status(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    return reply(await backend.get_status(tenant, request.match_info["job_id"]))


async def job_result(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
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
    backend, tenant = backend_and_tenant(request)
    job_id = request.match_info["job_id"]
    await backend.cancel(tenant, job_id)
    return reply(CancelResponse(job_id=job_id))


async def rerun_job(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    body = await parse_body(request, RerunRequest, empty_ok=True)
    overrides = Overrides(job_type=body.job_type, timeout=body.timeout)
    submitted = await backend.rerun(tenant, request.match_info["job_id"], overrides)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def fork_job(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    body = await parse_body(request, ForkRequest)
    overrides = Overrides(code=body.code, job_type=body.job_type, timeout=body.timeout)
    submitted = await backend.fork(tenant, request.match_info["job_id"], overrides)
    return reply(AsyncExecuteResponse(job_id=submitted.job_id, status=submitted.status))


async def artifact(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
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


ROUTES: list[RouteSpec] = [
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
]
