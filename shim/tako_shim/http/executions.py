"""Routes of the execution history: the newest-first list and one record."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tako_shim.backends.base import RecordFilter
from tako_shim.errors import NotFound
from tako_shim.http.common import backend_and_tenant, parse_query, record_view, reply_off_loop
from tako_shim.http.listing import page_items
from tako_shim.http.middleware import SETTINGS_KEY
from tako_shim.http.openapi import RouteSpec
from tako_shim.http.params import ListQuery, ViewQuery
from tako_vm.models.wire import ExecutionRecordFull, PaginatedResponse


async def list_executions(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    query = parse_query(request, ListQuery)
    status = "queued" if query.status == "pending" else query.status
    settings = request.app[SETTINGS_KEY]
    page = await backend.list_records(
        tenant,
        RecordFilter(
            status=status,
            job_type=query.job_type,
            session_id=query.session_id,
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
    backend, tenant = backend_and_tenant(request)
    query = parse_query(request, ViewQuery)
    try:
        record = await backend.get_record(tenant, request.match_info["execution_id"])
    except NotFound:
        raise NotFound("Execution not found") from None
    return await reply_off_loop(record_view(record, query.view))


ROUTES: list[RouteSpec] = [
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
]
