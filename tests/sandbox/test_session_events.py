"""``GET /sessions/{id}/executions/{execution_id}/events`` on the local backend, on real gVisor.

The client derives the execution id from its Idempotency-Key (``execution_id_for_key``), opens the
stream, then POSTs the call: output arrives while the cell runs, resumes with ``Last-Event-ID`` without
gaps or duplicates, and a finished call replays its record.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_sessions import A, B, Shim, settings_for, shim  # noqa: F401 - the fixture

from tako_vm.models.sessions import execution_id_for_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from session_sse import TICKING, check_live, read_events, text_of


async def post(
    running: Shim, sid: str, code: str, key: str, headers: dict[str, str] = A
) -> asyncio.Task[Any]:
    async def call() -> dict[str, Any]:
        response = await running.http.post(
            f"/sessions/{sid}/execute", json={"code": code}, headers={**headers, "Idempotency-Key": key}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    return asyncio.create_task(call())


async def test_output_streams_while_the_cell_runs_in_order_and_apart(shim: Shim) -> None:  # noqa: F811
    sid = await shim.new()
    key = "live-" + uuid.uuid4().hex
    eid = execution_id_for_key(sid, key)
    task = await post(shim, sid, TICKING, key)
    events = await read_events(shim.http, sid, eid, headers=A, pending=task)
    reply = await task
    assert reply["execution_id"] == eid, "the id the client derived is the call's id"
    check_live(events, reply)
    assert "running" in [e["data"].get("status") for e in events if e["event"] == "status"]


async def test_reconnect_resumes_without_gaps_or_duplicates_and_finished_calls_replay(shim: Shim) -> None:  # noqa: F811
    sid = await shim.new()
    key = "resume-" + uuid.uuid4().hex
    eid = execution_id_for_key(sid, key)
    task = await post(shim, sid, TICKING, key)
    first = await read_events(shim.http, sid, eid, headers=A, stop_after=4, pending=task)
    assert len(first) == 4 and first[-1]["event"] != "result"
    rest = await read_events(shim.http, sid, eid, headers=A, last=first[-1]["id"])
    reply = await task
    both = first + rest
    assert text_of(both, "stdout") == reply["stdout"] and text_of(both, "stderr") == reply["stderr"]
    assert [e["event"] for e in both].count("result") == 1
    assert len({e["id"] for e in both}) == len(both), "nothing repeated"

    replay = await read_events(shim.http, sid, eid, headers=A)  # finished: stored output, result at once
    assert text_of(replay, "stdout") == reply["stdout"] and replay[-1]["data"] == reply
    middle = await read_events(shim.http, sid, eid, headers=A, last=rest[0]["id"])
    assert text_of(first + rest[:1] + middle, "stdout") == reply["stdout"]

    shim.backend.sessions.calls.calls.clear()  # no longer in memory: served from the job history
    stored = await read_events(shim.http, sid, eid, headers=A)
    assert text_of(stored, "stdout") == reply["stdout"] and stored[-1]["data"]["result"] == "'done'"

    plain = await shim.run(sid, "print('no key')")  # without a key: a server-chosen id, streamed after
    after = await read_events(shim.http, sid, plain["execution_id"], headers=A)
    assert text_of(after, "stdout") == "no key\n" and after[-1]["event"] == "result"


async def test_other_tenant_unknown_execution_and_bad_cursor(shim: Shim) -> None:  # noqa: F811
    sid = await shim.new()
    done = await shim.run(sid, "print(1)")
    url = f"/sessions/{sid}/executions/{done['execution_id']}/events"
    assert (await shim.http.get(url, headers=B)).status_code == 404, "another tenant's session"
    unknown = f"/sessions/{sid}/executions/{uuid.uuid4()}/events"
    response = await shim.http.get(unknown, headers=A)
    assert response.status_code == 404 and "Execution not found" in response.text
    bad = await shim.http.get(url, headers={**A, "Last-Event-ID": "junk"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.text
    other = await shim.new(B)  # another of the caller's sessions does not own this execution
    assert (
        await shim.http.get(f"/sessions/{other}/executions/{done['execution_id']}/events", headers=B)
    ).status_code == 404


async def test_the_stream_is_capped_like_the_record_with_its_notice(tmp_path: Path) -> None:
    async with Shim(settings_for(tmp_path, max_stdout_bytes=2048)) as capped:
        if capped.backend.sessions is None:
            pytest.skip("runsc cannot start a sandbox here")
        sid = await capped.new()
        key = "cap-" + uuid.uuid4().hex
        task = await post(capped, sid, "for i in range(500):\n    print('x' * 20)", key)
        events = await read_events(capped.http, sid, execution_id_for_key(sid, key), headers=A, pending=task)
        reply = await task
        streamed = text_of(events, "stdout")
        assert streamed == reply["stdout"] and "[TRUNCATED: output exceeded the limit]" in streamed
        assert len(streamed) < 2048 + 200


async def test_sdk_run_with_on_output_streams_live_sync_and_async(shim: Shim) -> None:  # noqa: F811
    import tako_vm

    url = str(shim.server.make_url(""))
    key = A["X-API-Key"]
    async with tako_vm.AsyncClient(url, api_key=key) as client, tako_vm.AsyncSession(client) as session:
        chunks: list[tuple[str, str, float]] = []
        record = await session.run(
            TICKING, on_output=lambda e: chunks.append((e.type, e.text, time.monotonic()))
        )
        ended = time.monotonic()
        assert "".join(t for s, t, _ in chunks if s == "stdout") == record.stdout
        assert "".join(t for s, t, _ in chunks if s == "stderr") == record.stderr
        assert chunks[0][2] < ended - 2.0, "the first chunk came while the cell ran"
        events = [e async for e in session.stream(record.execution_id)]  # a finished call, at once
        assert events[-1].type == "result" and events[-1].record["result"] == "'done'"

    def sync_run() -> tuple[Any, list[tuple[str, str]]]:
        seen: list[tuple[str, str]] = []
        with tako_vm.Client(url, api_key=key) as sync_client, tako_vm.Session(sync_client) as s:
            s.run("x = 41")
            done = s.run(
                "print('a'); import sys; print('b', file=sys.stderr); x + 1",
                on_output=lambda e: seen.append((e.type, e.text)),
            )
            return done, seen

    done, seen = await asyncio.to_thread(sync_run)
    assert done.result == "42"
    for stream, text in (("stdout", "a\n"), ("stderr", "b\n")):  # each chunk exactly once (live or replayed)
        assert "".join(t for s, t in seen if s == stream) == text


async def test_cli_session_run_prints_output_live(shim: Shim) -> None:  # noqa: F811
    import io

    from tako_vm.cli import main

    class Timed(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[tuple[float, str]] = []

        def write(self, text: str) -> int:
            self.writes.append((time.monotonic(), text))
            return super().write(text)

    sid = await shim.new()
    out, err = Timed(), Timed()
    argv = [
        "session",
        "run",
        sid,
        "-c",
        TICKING,
        "--url",
        str(shim.server.make_url("")),
        "--api-key",
        A["X-API-Key"],
    ]
    code = await asyncio.to_thread(main, argv, out=out, err=err)
    assert code == 0
    assert out.getvalue().startswith("out 0 ") and out.getvalue().endswith("'done'\n")
    assert err.getvalue() == "".join(f"err {i}\n" for i in range(4)), "stderr printed once, live"
    first = next(at for at, text in out.writes if text.startswith("out 0"))
    assert first < out.writes[-1][0] - 2.0, "the first line printed seconds before the result"
