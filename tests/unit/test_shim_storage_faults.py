"""Storage faults of the local backend: a locked database and a full disk, with a FAKE sandbox runner.

The faults are real SQLite conditions, not mocks: another connection holds ``BEGIN EXCLUSIVE`` on the
store's file (``database is locked``), and ``PRAGMA max_page_count`` caps the database at its current
size (SQLite's own ``database or disk is full``). Only the sandbox is faked (``FakeSandboxRunner`` from
test_shim_queue.py) so each case takes well under a second; tests/reliability/test_fault_local_storage.py
runs the same faults against a real server process with runsc and a full tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer
from test_shim_queue import FakeSandboxRunner, make_backend, submission

from tako_shim.backends.base import RecordFilter
from tako_shim.backends.local import backend as backend_module
from tako_shim.backends.local.backend import LocalBackend
from tako_shim.backends.local.store import JobRow, JobStore, storage_error
from tako_shim.errors import StorageBusy, StorageFull
from tako_shim.http.app import create_app

BUSY_TIMEOUT = 0.05  # the store's SQLite busy timeout in these tests (production: 5 s)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "TERMINAL_WRITE_FIRST_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(backend_module, "TERMINAL_WRITE_MAX_DELAY_SECONDS", 0.05)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` from a second connection (a backup tool, another server)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def cap_at_current_size(store: JobStore) -> None:
    """Make the database 'full': it may not grow by a single page (SQLITE_FULL, as on a full disk)."""
    assert store._conn is not None
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")


def uncap(store: JobStore) -> None:
    assert store._conn is not None
    store._conn.execute("PRAGMA max_page_count = 1073741823")


def row(job_id: str, code: str = "print(1)") -> JobRow:
    return JobRow(
        job_id=job_id,
        tenant="default",
        status="queued",
        job_type="default",
        created_at="2026-01-01T00:00:00+00:00",
        code=code,
        input_data={},
        requirements=[],
        timeout=30,
        startup_timeout=30,
        code_hash="c",
        input_hash="i",
    )


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    runner = FakeSandboxRunner()
    local = make_backend(tmp_path, runner, max_workers=1)
    local.store = JobStore(local.store.path, busy_timeout_seconds=BUSY_TIMEOUT)
    await local.start()
    try:
        yield local
    finally:
        await local.close()


def runner_of(backend: LocalBackend) -> FakeSandboxRunner:
    runner = backend._executor
    assert isinstance(runner, FakeSandboxRunner)
    return runner


def workers_alive(backend: LocalBackend) -> bool:
    return bool(backend._tasks) and not any(task.done() for task in backend._tasks)


async def eventually(condition: Callable[[], bool], within: float = 15.0) -> bool:
    """Poll ``condition`` until true or ``within`` seconds pass (generous: the machine is often loaded)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def stored_status(backend: LocalBackend, job_id: str) -> str | None:
    found = backend.store.get_any_tenant(job_id)
    return found.status if found else None


# -- the store: typed errors instead of sqlite3.OperationalError ------------------------------------


def test_store_reports_a_locked_database_as_storage_busy_and_keeps_reading(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", busy_timeout_seconds=BUSY_TIMEOUT)
    store.open()
    store.insert(row("kept"))
    with exclusive_lock(store.path):
        with pytest.raises(StorageBusy) as busy:
            store.insert(row("blocked"))
        assert store.get("default", "kept") is not None  # WAL: reads pass the writer's lock
    assert "database is busy" in busy.value.detail and busy.value.status == 503
    assert busy.value.headers["Retry-After"] == "5"
    assert "database is locked" in busy.value.cause
    store.insert(row("after"))  # nothing stuck once the lock is gone
    assert store.get("default", "after") is not None and store.get("default", "blocked") is None
    store.close()


def test_store_reports_a_full_database_as_storage_full_and_loses_nothing(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.open()
    store.insert(row("kept"))
    cap_at_current_size(store)
    with pytest.raises(StorageFull) as full:
        store.insert(row("big", code="x" * 200_000))  # needs many new pages
    assert "out of disk space" in full.value.detail and full.value.status == 503
    assert full.value.headers["Retry-After"] == "30"
    assert "full" in full.value.cause
    uncap(store)
    assert [r.job_id for r in store.list_rows("default", status=None, job_type=None, limit=9, offset=0)] == [
        "kept"
    ]
    assert store._conn is not None and store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_store_refuses_a_new_job_below_its_free_space_reserve_naming_the_limit(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = JobStore(tmp_path / "jobs.sqlite3", reserve_bytes=free + 1024**3)  # more than the disk has
    store.open()
    with pytest.raises(StorageFull) as full:
        store.insert(row("refused"))
    limit = f"{(free + 1024**3) / 1024**2:g} MiB"
    assert "out of disk space" in full.value.detail and limit in full.value.detail
    assert str(tmp_path) in full.value.cause and full.value.status == 503
    store.reserve_bytes = 0
    store.insert(row("accepted"))  # the same store takes jobs again once there is room
    assert store.get("default", "refused") is None and store.get("default", "accepted") is not None
    store.close()


def test_storage_error_classifies_by_code_and_message_and_leaves_other_errors_alone() -> None:
    assert isinstance(storage_error(sqlite3.OperationalError("database is locked")), StorageBusy)
    assert isinstance(storage_error(sqlite3.OperationalError("database or disk is full")), StorageFull)
    assert storage_error(sqlite3.OperationalError("no such table: jobs")) is None
    coded = sqlite3.OperationalError("something else")
    coded.sqlite_errorcode = 13 | (1 << 8)  # an extended SQLITE_FULL code
    assert isinstance(storage_error(coded), StorageFull)


# -- the HTTP boundary: 503 with a clear detail and Retry-After -------------------------------------


async def test_submissions_during_a_lock_or_a_full_disk_get_a_503_over_http(tmp_path: Path) -> None:
    local = make_backend(tmp_path, FakeSandboxRunner(), max_workers=1, api_rate_limit_enabled=False)
    local.store = JobStore(local.store.path, busy_timeout_seconds=BUSY_TIMEOUT)
    server = TestServer(create_app(local.settings, local), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url(""))) as http:
            with exclusive_lock(local.store.path):
                busy = await http.post("/execute/async", json={"code": "print(1)"})
            cap_at_current_size(local.store)
            full = await http.post("/execute/async", json={"code": "x = 1\n" * 15_000})
            uncap(local.store)
            fine = await http.post("/execute/async", json={"code": "print(2)"})
            listing = await http.get("/executions")
    finally:
        await server.close()
    assert busy.status_code == 503, busy.text
    assert "job history database is busy" in busy.json()["detail"]
    assert busy.headers["Retry-After"] == "5" and busy.json()["correlation_id"]
    assert full.status_code == 503, full.text
    assert "out of disk space" in full.json()["detail"] and full.headers["Retry-After"] == "30"
    assert fine.status_code == 200
    assert [item["execution_id"] for item in listing.json()["items"]] == [fine.json()["job_id"]]


# -- the worker: the real outcome survives, the worker survives ---------------------------------------


async def test_a_job_finishing_during_a_lock_keeps_its_outcome_and_is_written_once_the_lock_ends(
    backend: LocalBackend,
) -> None:
    job = await backend.submit("default", submission(backend, "print('real')"))
    assert await eventually(lambda: job.job_id in runner_of(backend).started)  # the worker took it (gated)
    with exclusive_lock(backend.store.path):
        runner_of(backend).gate.set()
        record = await backend.wait_for("default", job.job_id, 5)
        # Known to readers at once, from memory, while the row cannot be written:
        assert record is not None and (record.status, record.stdout) == ("succeeded", "print('real')")
        assert (await backend.get_status("default", job.job_id)).status == "succeeded"
        listed = await backend.list_records("default", RecordFilter(limit=10, offset=0))
        assert [(r.execution_id, r.status) for r in listed.records] == [(job.job_id, "succeeded")]
        await asyncio.sleep(0.3)  # several attempts fail meanwhile
        assert stored_status(backend, job.job_id) == "running"
        assert workers_alive(backend)
    assert await eventually(lambda: stored_status(backend, job.job_id) == "succeeded")  # retry lands
    stored = backend.store.get_any_tenant(job.job_id)
    assert stored is not None and (stored.status, stored.outcome["stdout"]) == ("succeeded", "print('real')")
    assert not backend._unsaved
    follow_up = await backend.submit("default", submission(backend, "print('next')"))
    record = await backend.wait_for("default", follow_up.job_id, 5)
    assert record is not None and record.stdout == "print('next')" and workers_alive(backend)


async def test_a_lock_outlasting_the_retry_budget_logs_keeps_the_outcome_and_the_worker_goes_on(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(backend_module, "TERMINAL_WRITE_GIVE_UP_SECONDS", 0.2)
    first = await backend.submit("default", submission(backend, "print('a')"))
    second = await backend.submit("default", submission(backend, "print('b')"))
    assert await eventually(lambda: first.job_id in runner_of(backend).started)  # the worker took it (gated)
    with (
        caplog.at_level(logging.WARNING, logger="tako_shim.backends.local.backend"),
        exclusive_lock(backend.store.path),
    ):
        runner_of(backend).gate.set()
        # The worker gives up on the first write, runs the second job (unable even to mark it
        # running) and gives up on its write too: both outcomes stay readable, the worker lives.
        for job_id, out in ((first.job_id, "print('a')"), (second.job_id, "print('b')")):
            record = await backend.wait_for("default", job_id, 5)
            assert record is not None and (record.status, record.stdout) == ("succeeded", out)
        assert await eventually(lambda: sum(r.levelno == logging.ERROR for r in caplog.records) == 2)
        assert workers_alive(backend)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("kept in memory, the job re-runs after a restart" in e for e in errors)
    assert any("could not mark it running" in r.getMessage() for r in caplog.records)
    # Unwritten rows are unfinished in SQLite, so a restart runs them again instead of losing them.
    assert stored_status(backend, first.job_id) == "running"
    assert stored_status(backend, second.job_id) == "queued"
    assert (await backend.get_record("default", first.job_id)).status == "succeeded"  # still from memory


async def test_a_submission_during_a_lock_is_refused_and_not_queued(backend: LocalBackend) -> None:
    with exclusive_lock(backend.store.path), pytest.raises(StorageBusy):
        await backend.submit("default", submission(backend, "print(1)"))
    assert not backend._pending and backend._queue.empty()
    assert (await backend.pool_stats("default")).pending == 0


async def test_cancelling_a_queued_job_during_a_lock_is_refused_and_the_job_still_runs(
    backend: LocalBackend,
) -> None:
    blocker = await backend.submit("default", submission(backend, "print('first')"))
    queued = await backend.submit("default", submission(backend, "print('queued')"))
    assert await eventually(
        lambda: blocker.job_id in runner_of(backend).started
    )  # the worker took it (gated)
    with exclusive_lock(backend.store.path), pytest.raises(StorageBusy):
        await backend.cancel("default", queued.job_id)
    assert queued.job_id in backend._pending
    runner_of(backend).gate.set()
    for job_id in (blocker.job_id, queued.job_id):
        record = await backend.wait_for("default", job_id, 5)
        assert record is not None and record.status == "succeeded"
    assert runner_of(backend).started == [blocker.job_id, queued.job_id]  # once each


async def test_a_job_finishing_on_a_full_disk_is_written_once_space_returns(backend: LocalBackend) -> None:
    job = await backend.submit("default", submission(backend, "print('big output')"))
    assert await eventually(lambda: job.job_id in runner_of(backend).started)  # the worker took it (gated)
    cap_at_current_size(backend.store)
    runner_of(backend).gate.set()
    record = await backend.wait_for("default", job.job_id, 5)
    assert record is not None and record.status == "succeeded"
    await asyncio.sleep(0.2)
    with pytest.raises(StorageFull):  # the disk is still full for new work
        await backend.submit("default", submission(backend, "y = 2\n" * 15_000))
    assert workers_alive(backend)
    uncap(backend.store)
    assert await eventually(lambda: stored_status(backend, job.job_id) == "succeeded")


async def test_a_job_whose_row_cannot_be_read_is_requeued_not_failed(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read refused by the store (rare under WAL, so injected here by wrapping the store's method)."""
    real_read = backend.store.get_any_tenant
    refusals = [StorageBusy("busy", cause="database is locked")] * 2

    def flaky_read(job_id: str) -> JobRow | None:
        if refusals:
            raise refusals.pop()
        return real_read(job_id)

    monkeypatch.setattr(backend.store, "get_any_tenant", flaky_read)
    runner_of(backend).gate.set()
    job = await backend.submit("default", submission(backend, "print('eventually')"))
    record = await backend.wait_for("default", job.job_id, 5)
    assert record is not None and (record.status, record.stdout) == ("succeeded", "print('eventually')")
    assert not refusals and runner_of(backend).started == [job.job_id] and workers_alive(backend)
