"""Live events of one job (`GET /jobs/{job_id}/events`) or one session call
(`GET /sessions/{id}/executions/{execution_id}/events`): Server-Sent Events read with httpx-sse.

    for event in client.stream(job_id):          # or: async for event in async_client.stream(job_id)
        if event.type == "stdout":
            print(event.text, end="")
        elif event.type == "result":
            record = event.record

Events are typed: `StatusEvent` (`status` on every transition), `OutputEvent` (`stdout`/`stderr` chunks
in the order the code wrote them) and one final `ResultEvent` with the record, after which the stream
ends. A dropped connection is resumed with `Last-Event-ID` (up to `max_retries` times in a row, with
backoff), so no chunk is lost or repeated; `last_event_id` resumes a stream read earlier.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from tako_vm import _core as core
from tako_vm.errors import MalformedResponseError


@dataclass(frozen=True)
class StatusEvent:
    id: str
    job_id: str
    status: str
    type: Literal["status"] = "status"


@dataclass(frozen=True)
class OutputEvent:
    id: str
    type: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class ResultEvent:
    id: str
    record: dict[str, Any] = field(repr=False)
    type: Literal["result"] = "result"

    @property
    def status(self) -> str:
        return str(self.record.get("status"))


StreamEvent = StatusEvent | OutputEvent | ResultEvent


def to_event(sse: ServerSentEvent) -> StreamEvent | None:
    """The typed event of one SSE message (None for event types this SDK does not know)."""
    try:
        data = json.loads(sse.data)
    except json.JSONDecodeError as exc:
        raise MalformedResponseError(f"event {sse.event!r} ({sse.id}) is not JSON: {exc}") from None
    if sse.event == "status":  # a session call's status names its execution_id
        return StatusEvent(
            sse.id, str(data.get("job_id") or data.get("execution_id")), str(data.get("status"))
        )
    if sse.event == "stdout":
        return OutputEvent(sse.id, "stdout", str(data.get("text", "")))
    if sse.event == "stderr":
        return OutputEvent(sse.id, "stderr", str(data.get("text", "")))
    if sse.event == "result":
        return ResultEvent(sse.id, data)
    return None


def _request(config: core.ClientConfig, call: core.Call[Any], last_event_id: str | None) -> dict[str, Any]:
    headers = core.request_headers(config, call)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return {
        "method": "GET",
        "url": config.base_url + call.path,
        "headers": headers,
        "timeout": core.build_timeout(config, call),
    }


def events_call(job_id: str) -> core.Call[Any]:
    return core.Call("GET", f"/jobs/{core._segment(job_id, 'job_id')}/events", core.parse_object)


def session_events_call(session_id: str, execution_id: str) -> core.Call[Any]:
    path = (
        f"/sessions/{core._segment(session_id, 'session_id')}/executions/"
        f"{core._segment(execution_id, 'execution_id')}/events"
    )
    return core.Call("GET", path, core.parse_object)


class _Resume:
    """Where a stream is and whether it may reconnect once more."""

    def __init__(self, config: core.ClientConfig, last_event_id: str | None) -> None:
        self.config = config
        self.last_event_id = last_event_id
        self.failures = 0

    def seen(self, event: StreamEvent) -> None:
        self.last_event_id = event.id
        self.failures = 0

    def failed(self, call: core.Call[Any], request: dict[str, Any], exc: Exception | None) -> float:
        """The delay before reconnecting, or raise when the retries are used up."""
        self.failures += 1
        if self.failures > self.config.max_retries:
            if exc is None:
                raise MalformedResponseError(f"the event stream {call.path} ended before its result")
            raise core.transport_error(call, request["headers"], exc) from exc
        return core.backoff_delay(self.config, self.failures)


def stream_events(
    http: httpx.Client,
    config: core.ClientConfig,
    job_id: str,
    last_event_id: str | None,
    sleep: Any,
    call: core.Call[Any] | None = None,
) -> Iterator[StreamEvent]:
    """The events of the job (or of ``call``'s stream) beyond ``last_event_id``, until the result."""
    call = call or events_call(job_id)
    resume = _Resume(config, last_event_id)
    while True:
        request = _request(config, call, resume.last_event_id)
        error: Exception | None = None
        try:
            with connect_sse(http, request.pop("method"), request.pop("url"), **request) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    raise core.api_error(source.response)
                for sse in source.iter_sse():
                    event = to_event(sse)
                    if event is None:
                        continue
                    resume.seen(event)
                    yield event
                    if event.type == "result":
                        return
        except httpx.TransportError as exc:
            error = exc
        sleep(resume.failed(call, _request(config, call, None), error))


async def astream_events(
    http: httpx.AsyncClient,
    config: core.ClientConfig,
    job_id: str,
    last_event_id: str | None,
    sleep: Any,
    call: core.Call[Any] | None = None,
) -> AsyncIterator[StreamEvent]:
    call = call or events_call(job_id)
    resume = _Resume(config, last_event_id)
    while True:
        request = _request(config, call, resume.last_event_id)
        error: Exception | None = None
        try:
            async with aconnect_sse(http, request.pop("method"), request.pop("url"), **request) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    raise core.api_error(source.response)
                async for sse in source.aiter_sse():
                    event = to_event(sse)
                    if event is None:
                        continue
                    resume.seen(event)
                    yield event
                    if event.type == "result":
                        return
        except httpx.TransportError as exc:
            error = exc
        await sleep(resume.failed(call, _request(config, call, None), error))
