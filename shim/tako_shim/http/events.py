"""``GET /jobs/{job_id}/events`` and ``GET /sessions/{id}/executions/{execution_id}/events``: a job's or
a session call's live output and status as Server-Sent Events (aiohttp-sse).

The handler stays thin: parse ``Last-Event-ID``, ask the backend for the events beyond it
(``Backend.events``, see ``tako_shim.backends.events`` for the ids and the event types) and write each
as one SSE message until the ``result`` event. Errors that happen before the first event (unknown job,
bad ``Last-Event-ID``) are ordinary JSON errors; open streams are closed when the server shuts down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from aiohttp import web
from aiohttp_sse import sse_response

from tako_shim.backends.base import Cursor, JobEvent
from tako_shim.http.common import backend_and_tenant
from tako_shim.http.middleware import CORRELATION_HEADER, CORRELATION_ID_KEY, SECURITY_HEADERS
from tako_shim.http.openapi import RouteSpec


class OpenStreams:
    """The handler tasks of the streams that are open (ended at shutdown)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()


STREAMS_KEY = web.AppKey("event_streams", OpenStreams)
RETRY_MS = 1000  # what a browser's EventSource waits before reconnecting


async def job_events(request: web.Request) -> web.StreamResponse:
    backend, tenant = backend_and_tenant(request)
    cursor = Cursor.parse(request.headers.get("Last-Event-ID"))
    return await serve_events(request, backend.events(tenant, request.match_info["job_id"], cursor))


async def session_execution_events(request: web.Request) -> web.StreamResponse:
    from tako_shim.http.sessions import session_service

    service, tenant = session_service(request)
    cursor = Cursor.parse(request.headers.get("Last-Event-ID"))
    info = request.match_info
    return await serve_events(
        request, service.events(tenant, info["session_id"], info["execution_id"], cursor)
    )


async def serve_events(request: web.Request, events: AsyncGenerator[JobEvent, None]) -> web.StreamResponse:
    """Write ``events`` as SSE messages; errors before the first event are ordinary JSON errors."""
    first = await anext(events, None)  # NotFound and friends become JSON errors: nothing is sent yet
    headers = {CORRELATION_HEADER: request[CORRELATION_ID_KEY], **SECURITY_HEADERS}
    streams = request.app[STREAMS_KEY].tasks
    task = asyncio.current_task()
    assert task is not None
    streams.add(task)
    try:
        async with sse_response(request, headers=headers) as sse:
            sse.headers["X-Accel-Buffering"] = "no"
            if first is not None:
                await sse.send(json.dumps(first.data), id=first.id, event=first.event, retry=RETRY_MS)
                async for event in events:
                    await sse.send(json.dumps(event.data), id=event.id, event=event.event)
    finally:
        streams.discard(task)
        await events.aclose()
    return sse


async def close_streams(app: web.Application) -> None:
    """On shutdown: end open streams at once (clients reconnect with their Last-Event-ID elsewhere)."""
    for task in list(app[STREAMS_KEY].tasks):
        task.cancel()


def install(app: web.Application) -> None:
    app[STREAMS_KEY] = OpenStreams()
    app.on_shutdown.append(close_streams)


ROUTES: list[RouteSpec] = [
    RouteSpec(
        "GET",
        "/jobs/{job_id}/events",
        job_events,
        "Live output and status as Server-Sent Events (status, stdout, stderr, result); resume with "
        "Last-Event-ID",
        raw_response="text/event-stream",
        errors={404: "Job not found", 422: "Last-Event-ID is not an event id of this stream"},
    ),
    RouteSpec(
        "GET",
        "/sessions/{session_id}/executions/{execution_id}/events",
        session_execution_events,
        "A session call's live output as Server-Sent Events (status, stdout, stderr, result with the "
        "execution); resume with Last-Event-ID",
        raw_response="text/event-stream",
        errors={
            404: "Session or execution not found",
            422: "Last-Event-ID is not an event id of this stream",
            501: "Backend without live session output",
        },
    ),
]
