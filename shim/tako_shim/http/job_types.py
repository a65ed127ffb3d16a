"""Routes of the job types: the list and one entry."""

from __future__ import annotations

from aiohttp import web

from tako_shim.errors import NotFound
from tako_shim.http.common import backend_and_tenant, reply
from tako_shim.http.openapi import RouteSpec
from tako_vm.models.wire import JobTypeResponse


async def list_job_types(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    types = await backend.job_types(tenant)
    return web.json_response([t.model_dump(mode="json") for t in types])


async def get_job_type(request: web.Request) -> web.Response:
    backend, tenant = backend_and_tenant(request)
    name = request.match_info["name"]
    for job_type in await backend.job_types(tenant):
        if job_type.name == name:
            return reply(job_type)
    raise NotFound(f"Job type '{name}' not found")


ROUTES: list[RouteSpec] = [
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
]
