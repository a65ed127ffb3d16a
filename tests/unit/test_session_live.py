"""The pure parts of a session call's live output: the execution id derived from an Idempotency-Key,
the runner's live lines and the shim's tail of them, the tracked calls, resuming a stream from any
event id, and the kubernetes backend's feed from the session Pod."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

from tako_runner import session as session_runner
from tako_shim.backends.events import Cursor, JobEvent
from tako_shim.backends.kubernetes import session_live as kube_live
from tako_shim.backends.kubernetes import session_translate as st
from tako_shim.backends.live import LiveOutput
from tako_shim.backends.local import session_live
from tako_vm.models.sessions import EXECUTION_ID_NAMESPACE, SessionExecution, execution_id_for_key

LIMITS = {"stdout": 100, "stderr": 100}


def execution(text: str = "ab\ncd\n", err: str = "E\n") -> SessionExecution:
    return SessionExecution(
        execution_id="e", session_id="sess-1", status="succeeded", stdout=text, stderr=err, result="1"
    )


def test_the_execution_id_follows_from_the_session_and_the_key() -> None:
    eid = execution_id_for_key("sess-abc", "key-12345678")
    assert eid == str(uuid.uuid5(EXECUTION_ID_NAMESPACE, "sess-abc:key-12345678")), "the documented formula"
    assert eid == execution_id_for_key("sess-abc", "key-12345678"), "deterministic: the client knows it"
    assert eid != execution_id_for_key("sess-abd", "key-12345678") != execution_id_for_key("sess-abc", "k2")
    assert st.is_execution_id(eid) and st.record_name("sess-abc", eid).endswith(uuid.UUID(eid).hex)


def test_the_runner_publishes_only_the_kept_output_and_the_tail_reads_it_in_pieces(tmp_path: Path) -> None:
    live = session_runner.LiveFile(str(tmp_path), 3)
    reply = session_runner.run_cell(
        {}, "import sys\nprint('x' * 8)\nprint('é', file=sys.stderr)", 3, 5, 6, live
    )
    live.close()
    assert reply["stdout"].startswith("xxxxxx\n[TRUNCATED") and reply["stdout_truncated"]
    data = (tmp_path / "live-3").read_bytes()
    tail = session_live.LiveTail(tmp_path / "partial", limit=10_000)
    out = LiveOutput(LIMITS)
    with open(tail.path, "wb") as handle:
        for cut in (5, 17, len(data)):  # partial lines wait for their end
            handle.write(data[handle.tell() : cut])
            handle.flush()
            tail.pump(out)
    texts = {s: "".join(t for stream, _, t in out.chunks if stream == s) for s in ("stdout", "stderr")}
    assert texts == {"stdout": "xxxxxx", "stderr": "é\n"}, "the kept part only; the notice is the record's"
    assert reply["stdout"].startswith(texts["stdout"])


def test_the_tail_refuses_links_and_fifos_and_stops_at_its_limit(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b'TAKO-LIVE stdout "leak"\n')
    (tmp_path / "link").symlink_to(target)
    assert session_live.LiveTail(tmp_path / "link", 1000).read() == []
    os.mkfifo(tmp_path / "fifo")
    assert session_live.LiveTail(tmp_path / "fifo", 1000).read() == [], "never blocks on a FIFO"
    (tmp_path / "big").write_bytes(b'TAKO-LIVE stdout "a"\n' * 100)
    tail = session_live.LiveTail(tmp_path / "big", 21 * 3)
    out = LiveOutput(LIMITS)
    tail.pump(out)
    assert [t for _, _, t in out.chunks] == ["a", "a", "a"] and tail.read() == []


def test_tracked_calls_keep_every_running_call_and_the_last_finished_ones() -> None:
    calls = session_live.TrackedCalls(keep=2)
    tracked = [session_live.Tracked("t", "s", f"e{i}", LiveOutput(LIMITS)) for i in range(4)]
    for t in tracked:
        calls.add(t)
    for t in tracked[:3]:
        calls.finished(t, execution())
    assert [calls.get(f"e{i}") is not None for i in range(4)] == [False, True, True, True]
    calls.drop(tracked[3])
    assert calls.get("e3") is None and tracked[3].dropped
    small = session_live.TrackedCalls(keep=10, chars=25)  # and by the size of their output
    for i in range(3):
        t = session_live.Tracked("t", "s", f"x{i}", LiveOutput(LIMITS))
        small.add(t)
        small.finished(t, execution("o" * 10))  # 10 + 2 characters each
    assert [small.get(f"x{i}") is not None for i in range(3)] == [False, True, True]


def text(events: list[JobEvent], stream: str) -> str:
    return "".join(e.data["text"] for e in events if e.event == stream)


async def collect(events: Any) -> list[JobEvent]:
    return [e async for e in events]


async def test_a_tracked_call_streams_live_then_its_result_and_resumes_from_any_id() -> None:
    tracked = session_live.Tracked("t", "sess-1", "e", LiveOutput(LIMITS))

    async def run() -> None:
        await asyncio.sleep(0.01)
        tracked.set_status("running")
        for stream, text in (("stdout", "ab\n"), ("stderr", "E\n"), ("stdout", "cd\n")):
            tracked.live.append(stream, text)
            await asyncio.sleep(0.01)
        tracked.finished(execution())

    runner = asyncio.create_task(run())
    events = await collect(session_live.stream(tracked, Cursor(), poll_seconds=0.05))
    await runner
    assert [e.event for e in events] == ["status", "status", "stdout", "stderr", "stdout", "status", "result"]
    assert events[0].data == {"session_id": "sess-1", "execution_id": "e", "status": "queued"}
    assert events[-1].data["result"] == "1"
    for i, event in enumerate(events):  # resuming after any event gives exactly the rest
        rest = await collect(session_live.stream(tracked, Cursor.parse(event.id)))
        for stream in ("stdout", "stderr"):
            assert text(rest, stream) == text(events[i + 1 :], stream), (i, stream)
        assert [e.event for e in rest].count("result") == (0 if i == len(events) - 1 else 1)
    stored = session_live.replay(execution(), Cursor.parse(events[2].id))
    assert "".join(e.data["text"] for e in stored if e.event == "stdout") == "cd\n"


async def test_a_call_dropped_before_it_ran_ends_its_streams_without_a_result() -> None:
    calls = session_live.TrackedCalls()
    tracked = session_live.Tracked("t", "sess-1", "e", LiveOutput(LIMITS))
    calls.add(tracked)
    asyncio.get_running_loop().call_later(0.05, calls.drop, tracked)
    events = await collect(session_live.stream(tracked, Cursor(), poll_seconds=0.02))
    assert [e.event for e in events] == ["status"], "queued, then the stream ends"


async def test_the_pod_feed_long_polls_until_done_and_ends_when_the_pod_loses_the_call() -> None:
    answers: list[dict[str, Any] | None] = [
        {"status": "queued", "chunks": []},
        {"status": "running", "chunks": [["stdout", "ab\n"]]},
        {"status": "running", "chunks": [["stderr", "E\n"], ["stdout", "cd\n"]]},
        {
            "status": "done",
            "chunks": [],
            "reply": {"status": "succeeded", "stdout": "ab\ncd\n", "stderr": "E\n"},
        },
    ]
    asked: list[int] = []

    async def fetch(after: int, wait: float) -> dict[str, Any] | None:
        asked.append(after)
        return answers.pop(0) if answers else None

    def build(reply: dict[str, Any]) -> SessionExecution:
        return st.execution_from_reply("e", "sess-1", reply, 5)

    feed = kube_live.PodFeed(fetch, LIMITS, build)
    assert await feed.poll(0)
    events = await collect(kube_live.stream(feed, "sess-1", "e", Cursor()))
    assert [e.event for e in events] == ["status", "status", "stdout", "stderr", "stdout", "status", "result"]
    assert asked == [0, 0, 1, 3], "each poll asks for the chunks after those it has"
    assert events[-1].data["stdout"] == "ab\ncd\n"

    lost = kube_live.PodFeed(fetch, LIMITS, build)  # no answers left: the Pod does not know the call
    assert not await lost.poll(0)
    assert await collect(kube_live.stream(lost, "sess-1", "e", Cursor())) == []
