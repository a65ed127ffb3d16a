"""`GET /jobs/{id}/events` (Server-Sent Events) against a real server process (local backend, real runsc):
live output while the code runs, resuming with Last-Event-ID, finished jobs, caps; and the SDK's stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sandbox_server import SANDBOX_TESTS, strict_server

import tako_vm
from tako_vm.testing import LocalServer

TICKER = (
    "import sys, time\nfor i in range(4):\n    print('tick', i)\n    time.sleep(1)\n"
    "print('bye', file=sys.stderr)\n"
)

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(tmp_path_factory, "events", max_stdout_bytes=2048) as running:
        yield running


def submit(server: LocalServer, code: str) -> str:
    response = httpx.post(f"{server.url}/execute/async", json={"code": code}, timeout=30)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def read_events(
    server: LocalServer, job_id: str, last_event_id: str | None = None, stop_after: int | None = None
) -> list[dict[str, Any]]:
    """The SSE messages as dicts (event, id, data, at = arrival time); ``stop_after`` drops the connection."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    current["at"] = time.monotonic()
                    events.append(current)
                    current = {}
                    if stop_after is not None and len(events) >= stop_after:
                        break
                continue
            field, _, value = line.partition(": ")
            if field in ("event", "id"):
                current[field] = value
            elif field == "data":
                current["data"] = json.loads(value)
    return events


def text_of(events: list[dict[str, Any]], stream: str) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == stream)


def test_output_of_a_job_printing_over_3_seconds_arrives_as_it_is_printed(server: LocalServer) -> None:
    job = submit(server, TICKER)
    events = read_events(server, job)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "result" and kinds[-2] == "status"
    assert "running" in [e["data"]["status"] for e in events if e["event"] == "status"]
    stdout = [e for e in events if e["event"] == "stdout"]
    assert len(stdout) >= 3, kinds  # separate chunks, not one block at the end
    record = events[-1]["data"]
    assert record["status"] == "succeeded" and record["stdout"] == "tick 0\ntick 1\ntick 2\ntick 3\n"
    assert text_of(events, "stdout") == record["stdout"] and text_of(events, "stderr") == "bye\n"
    # The first line reached the client while the job was still running (about 3 s before it ended).
    assert stdout[0]["at"] < events[-1]["at"] - 1.5
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)


def test_reconnect_with_last_event_id_loses_and_repeats_nothing(server: LocalServer) -> None:
    job = submit(server, TICKER)
    first = read_events(server, job, stop_after=3)  # status running + two chunks, then the connection drops
    assert [e["event"] for e in first].count("stdout") >= 1
    second = read_events(server, job, last_event_id=first[-1]["id"])
    record = second[-1]["data"]
    assert second[-1]["event"] == "result"
    assert text_of(first, "stdout") + text_of(second, "stdout") == record["stdout"]
    assert text_of(first, "stderr") + text_of(second, "stderr") == record["stderr"]
    assert not {e["id"] for e in first} & {e["id"] for e in second}
    # After the end, resuming from the last id gets nothing more; from the start, everything at once.
    assert read_events(server, job, last_event_id=second[-1]["id"]) == []
    replay = read_events(server, job)
    assert text_of(replay, "stdout") == record["stdout"] and replay[-1]["event"] == "result"


def test_the_stream_is_capped_like_the_record(server: LocalServer) -> None:
    job = submit(server, "import sys\nfor i in range(400):\n    print('x' * 40)\n")  # 16 KiB > 2 KiB
    events = read_events(server, job)
    record = events[-1]["data"]
    assert record["stdout_truncated"] is True
    assert record["stdout"].endswith("[TRUNCATED: output exceeded 2048 bytes]")
    assert text_of(events, "stdout") == record["stdout"]


def test_unknown_job_and_bad_last_event_id_are_json_errors(server: LocalServer) -> None:
    missing = httpx.get(f"{server.url}/jobs/nope/events", timeout=30)
    assert missing.status_code == 404 and missing.json()["detail"] == "Job not found"
    job = submit(server, "print(1)\n")
    bad = httpx.get(f"{server.url}/jobs/{job}/events", headers={"Last-Event-ID": "../1"}, timeout=30)
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]


def test_sdk_stream_yields_typed_events_sync_and_async(server: LocalServer) -> None:
    with tako_vm.Client(server.url) as client:
        job = client.submit_code("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
        events = list(client.stream(job))
    assert isinstance(events[0], tako_vm.StatusEvent)
    assert isinstance(events[-1], tako_vm.ResultEvent) and events[-1].status == "succeeded"
    out = "".join(e.text for e in events if isinstance(e, tako_vm.OutputEvent) and e.type == "stdout")
    assert out == "out\n" == events[-1].record["stdout"]

    async def collect() -> list[tako_vm.StreamEvent]:
        async with tako_vm.AsyncClient(server.url) as client:
            return [event async for event in client.stream(job, last_event_id=events[0].id)]

    resumed = asyncio.run(collect())  # the job has ended: the rest comes from the stored record at once
    assert resumed[-1].id == events[-1].id and isinstance(resumed[-1], tako_vm.ResultEvent)
    again = "".join(e.text for e in resumed if isinstance(e, tako_vm.OutputEvent) and e.type == "stdout")
    assert again == "out\n"


def test_each_line_arrives_within_half_a_second_of_its_print(server: LocalServer) -> None:
    """Issue #13: a job printing one line a second shows each line within 0.5 s of its print. The
    sandbox prints its wall clock (gVisor reads the host's), the client notes each chunk's arrival."""
    code = "import time\nfor i in range(4):\n    print(f'{time.time():.3f}', flush=True)\n    time.sleep(1)\n"
    job = submit(server, code)
    lags: list[float] = []
    with httpx.stream("GET", f"{server.url}/jobs/{job}/events", timeout=60) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "stdout":
                arrived = time.time()
                for printed in json.loads(line[6:])["text"].split():
                    lags.append(arrived - float(printed))
            elif line.startswith("data: ") and event == "result":
                break
    print(f"print-to-arrival lags (s): {[round(lag, 3) for lag in lags]}")
    assert len(lags) == 4, lags
    assert max(lags) < 0.5, f"lines arrived {[round(lag, 3) for lag in lags]} s after their print"
