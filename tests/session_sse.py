"""Reading a session call's event stream in tests (``GET /sessions/{id}/executions/{eid}/events``),
shared by the local (tests/sandbox) and kubernetes (tests/integration) tests."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from httpx_sse import aconnect_sse

Event = dict[str, Any]  # event, id, data, at (monotonic arrival)
TICKING = (
    "import sys, time\n"
    "for i in range(4):\n"
    "    print(f'out {i} {time.time()}')\n"
    "    print(f'err {i}', file=sys.stderr)\n"
    "    time.sleep(1)\n"
    "'done'"
)


async def read_events(
    http: httpx.AsyncClient,
    sid: str,
    eid: str,
    *,
    headers: dict[str, str] | None = None,
    last: str | None = None,
    stop_after: int | None = None,
    pending: asyncio.Task[Any] | None = None,
) -> list[Event]:
    """The stream's events (until ``result``, or ``stop_after`` of them); while ``pending`` (the POST)
    has not registered the call yet, a 404 is retried."""
    url = f"/sessions/{sid}/executions/{eid}/events"
    sent = {**(headers or {}), **({"Last-Event-ID": last} if last else {})}
    while True:
        found: list[Event] = []
        async with aconnect_sse(http, "GET", url, headers=sent) as source:
            if source.response.status_code == 404 and pending is not None and not pending.done():
                await asyncio.sleep(0.02)
                continue
            assert source.response.status_code == 200, (await source.response.aread()).decode()
            async for sse in source.aiter_sse():
                found.append({"event": sse.event, "id": sse.id, "data": json.loads(sse.data)})
                found[-1]["at"] = time.monotonic()
                if sse.event == "result" or (stop_after is not None and len(found) >= stop_after):
                    return found
        return found


def text_of(events: list[Event], stream: str) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == stream)


def check_live(events: list[Event], reply: dict[str, Any]) -> None:
    """What every backend promises for ``TICKING``: >= 3 stdout events before the one result, the
    first seconds before the end, streams kept apart in written order, the texts equal the reply's."""
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1, kinds
    lines = [e for e in events[:-1] if e["event"] == "stdout" and e["data"]["text"].startswith("out ")]
    assert len(lines) >= 3 and len({e["at"] for e in lines}) >= 3, "lines arrive one by one"
    assert lines[0]["at"] < events[-1]["at"] - 2.0, "the first line arrives seconds before the end"
    for e in lines:  # printed -> seen, for the report (not asserted: the machine is shared)
        _, number, printed = e["data"]["text"].split()
        seen = time.time() - (time.monotonic() - e["at"])
        print(f"line {number} seen {seen - float(printed):.3f} s after its print")
    assert text_of(events, "stdout") == reply["stdout"] and text_of(events, "stderr") == reply["stderr"]
    assert reply["stderr"] == "".join(f"err {i}\n" for i in range(4))
    order = [e["event"] for e in events if e["event"] in ("stdout", "stderr")]
    collapsed = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert collapsed == ["stdout", "stderr"] * 4, "written order kept, streams kept apart"
    result = events[-1]["data"]
    assert result["execution_id"] == reply["execution_id"] and result["result"] == "'done'"
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "every event has its own id"
