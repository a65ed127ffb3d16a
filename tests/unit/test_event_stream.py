"""The event stream's pure parts: cursor ids, resuming from any id, the live-line parser, the live log cap."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tako_shim.backends.events import Cursor, EventSource, JobEvent, finish, job_events, output_beyond
from tako_shim.backends.live import LiveLines, LiveOutput
from tako_shim.errors import InvalidRequest
from tako_vm.models.wire import ExecutionRecordFull

RECORD = ExecutionRecordFull(
    execution_id="j", status="succeeded", job_type="default", created_at="t", stdout="abcdef", stderr="XY"
)


def test_cursor_round_trips_and_rejects_junk() -> None:
    assert str(Cursor.parse("3.12.0")) == "3.12.0"
    assert Cursor.parse(None) == Cursor() == Cursor.parse("")
    for bad in ("x", "5.0.0", "1.2", "1.-2.0", "1.2.3.4", "1." + "9" * 13 + ".0"):
        with pytest.raises(InvalidRequest, match="Last-Event-ID"):
            Cursor.parse(bad)


def test_finish_sends_exactly_what_lies_beyond_any_cursor() -> None:
    full = finish("j", RECORD, Cursor())
    assert [e.event for e in full] == ["stdout", "stderr", "status", "result"]
    # From every id of the full stream, and from every offset in between, the rest completes the record.
    for out, err in itertools.product(range(7), range(3)):
        for status in (0, 2, 3):
            rest = finish("j", RECORD, Cursor(status, out, err))
            assert "abcdef"[:out] + "".join(e.data["text"] for e in rest if e.event == "stdout") == "abcdef"
            assert "XY"[:err] + "".join(e.data["text"] for e in rest if e.event == "stderr") == "XY"
            assert [e.event for e in rest][-1] == "result"
            assert ("status" in [e.event for e in rest]) == (status < 3)
    assert finish("j", RECORD, Cursor(4, 6, 2)) == []


def test_output_beyond_cuts_chunks_at_the_cursor() -> None:
    chunks = [("stdout", 0, "ab"), ("stderr", 0, "X"), ("stdout", 2, "cdef")]
    events, cursor = output_beyond(Cursor(2, 3, 0), chunks, 0)
    assert [(e.event, e.data["text"], e.id) for e in events] == [
        ("stderr", "X", "2.3.1"),
        ("stdout", "def", "2.6.1"),
    ]
    assert cursor == Cursor(2, 6, 1)


def test_live_log_caps_each_stream_and_wakes_waiters() -> None:
    async def scenario() -> None:
        log = LiveOutput({"stdout": 10, "stderr": 10})
        waiter = asyncio.ensure_future(log.changed(5))
        await asyncio.sleep(0)
        log.append("stdout", "x" * 500)
        await asyncio.wait_for(waiter, 1)
        assert log.length["stdout"] == 210  # cap + room for the notice
        log.append("stdout", "more")
        assert len(log.chunks) == 1
        log.close()
        await asyncio.wait_for(log.changed(5), 1)  # closed: returns at once

    asyncio.run(scenario())


def test_job_events_follow_a_live_log_then_finish_from_the_record() -> None:
    async def scenario() -> list[JobEvent]:
        log = LiveOutput({"stdout": 100, "stderr": 100})
        state = {"status": "running"}

        async def status() -> str:
            return state["status"]

        async def record() -> ExecutionRecordFull:
            return RECORD

        async def wait(seconds: float) -> None:
            await asyncio.sleep(0.01)

        async def produce() -> None:
            for part in ("ab", "cd", "ef"):
                await asyncio.sleep(0.02)
                log.append("stdout", part)
            log.close()
            state["status"] = "succeeded"

        source = EventSource("j", status, record, lambda: log, wait)
        task = asyncio.ensure_future(produce())
        events = [event async for event in job_events(source, Cursor(), poll_seconds=0.5)]
        await task
        return events

    events = asyncio.run(scenario())
    assert [e.event for e in events] == ["status", "stdout", "stdout", "stdout", "stderr", "status", "result"]
    assert "".join(e.data["text"] for e in events if e.event == "stdout") == "abcdef"


def test_live_lines_are_picked_out_of_a_noisy_channel() -> None:
    parser = LiveLines()
    data = (
        b'junk\nTAKO-LIVE stdout "a\\nb"\nTAKO-LIVE stderr "x"\nTAKO-ENVELOPE-V1 ' + b"z" * 3_000_000
        + b'\nTAKO-LIVE stdout "\\u00e9"\nTAKO-LIVE bogus "q"\nTAKO-LIVE stdout 5\nTAKO-LIVE stdout "tail'
    )  # fmt: skip
    found = []
    for start in range(0, len(data), 7001):
        found += parser.feed(data[start : start + 7001])
    assert found == [("stdout", "a\nb"), ("stderr", "x"), ("stdout", "é")]
    assert len(parser._partial) < 100  # the 3 MB line was never buffered
