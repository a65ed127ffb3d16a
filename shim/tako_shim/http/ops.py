"""Operational routes: health, metrics, queue statistics, the dead-letter view and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tako_shim.http.common import (
    BACKEND_KEY,
    OPENAPI_KEY,
    READY_KEY,
    backend_and_tenant,
    parse_query,
    reply,
)
from tako_shim.http.middleware import METRICS_KEY
from tako_shim.http.openapi import RouteSpec
from tako_shim.http.params import DeadLetterQuery
from tako_vm.models.wire import (
    DeadLetterEntry,
    DLQStatsResponse,
    HealthResponse,
    PaginatedResponse,
    QueueStatsResponse,
)


async def health(request: web.Request) -> web.Response:
    if not request.app[READY_KEY].get("ready"):
        return web.json_response({"status": "starting", "detail": "Server is not ready yet"}, status=503)
    return reply(await request.app[BACKEND_KEY].health())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; aggregates only, no tenant data (tako_shim/metrics.py, docs/metrics.md)."""
    metrics = request.app[METRICS_KEY]
    metrics.refresh()
    body = await asyncio.to_thread(metrics.render)  # ~20 ms for a busy registry: not on the loop
    return web.Response(
        body=body,
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )


async def pool_stats(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    return reply(await backend.pool_stats(tenant))


async def dlq_stats(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    counts = Counter(r.error.type for r in await backend.dead_letters(tenant) if r.error is not None)
    return reply(DLQStatsResponse(total=sum(counts.values()), by_error_type=dict(counts)))


async def dlq_list(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
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


HEALTH = RouteSpec("GET", "/health", health, "Liveness and runtime information", response=HealthResponse)
METRICS = RouteSpec(
    "GET",
    "/metrics",
    metrics,
    "Prometheus metrics of this shim (no API key; aggregates only; off with metrics_enabled: false)",
    raw_response="text/plain",
)

ROUTES: list[RouteSpec] = [
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
