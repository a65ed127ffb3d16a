"""Routes of the execution history: the newest-first list and one record."""

from __future__ import annotations

from aiohttp import web

from tako_shim.backends.base import RecordFilter
from tako_shim.errors import NotFound
from tako_shim.http.common import backend_and_tenant, parse_query, record_view, reply
from tako_shim.http.openapi import RouteSpec
from tako_shim.http.params import ListQuery, ViewQuery
from tako_vm.models.wire import ExecutionRecordFull, PaginatedResponse


async def list_executions(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    query = parse_query(request, ListQuery)
    status = "queued" if query.status == "pending" else query.status
    page = await backend.list_records(
        tenant, RecordFilter(status=status, job_type=query.job_type, limit=query.limit, offset=query.offset)
    )
    items = [record_view(r, query.view).model_dump(mode="json") for r in page.records]
    return reply(
        PaginatedResponse(
            items=items, limit=query.limit, offset=query.offset, has_more=page.has_more, count=len(items)
        )
    )


async def get_execution(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    query = parse_query(request, ViewQuery)
    try:
        record = await backend.get_record(tenant, request.match_info["execution_id"])
    except NotFound:
        raise NotFound("Execution not found") from None
    return reply(record_view(record, query.view))


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
