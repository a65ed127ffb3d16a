"""Queue, idempotency, tenancy and restart logic of the local backend, with a FAKE sandbox runner.

The fake (``FakeSandboxRunner``) stands in for runsc only so the queue rules can be checked in
milliseconds; the integration tests (tests/integration/test_shim_*.py) run the same paths with the
real executor and real runsc.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tako_shim.backends.base import Overrides, RecordFilter
from tako_shim.backends.local.backend import LocalBackend
from tako_shim.backends.local.fairqueue import FairQueue
from tako_shim.config import Settings
from tako_shim.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
)
from tako_vm.models.wire import ExecuteRequest


@dataclass
class FakeOutcome:
    status: str
    stdout: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "stdout": self.stdout,
            "exit_code": 0 if self.status == "succeeded" else 1,
        }


@dataclass
class FakeSandboxRunner:
    """Runs nothing: 'executes' a job by echoing its code after an optional gate opens."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[str] = field(default_factory=list)
    failures_left: int = 0

    def runtime_info(self) -> dict[str, Any]:
        return {"runtime": "fake", "available": True}

    async def run(
        self, job: dict[str, Any], artifact_dir: Path, cancel: asyncio.Event | None = None
    ) -> FakeOutcome:
        self.started.append(job["job_id"])
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("sandbox could not start")
        gate = asyncio.ensure_future(self.gate.wait())
        stop = asyncio.ensure_future(cancel.wait()) if cancel else None
        await asyncio.wait([t for t in (gate, stop) if t], return_when=asyncio.FIRST_COMPLETED)
        for task in (gate, stop):
            if task:
                task.cancel()
        if cancel is not None and cancel.is_set():
            return FakeOutcome("cancelled")
        return FakeOutcome("succeeded", stdout=job["code"])


def fake_job(
    settings: Settings, row: Any, environment: dict[str, str], memory: str, cpu: float
) -> dict[str, Any]:
    return {"job_id": row.job_id, "code": row.code}


def make_backend(tmp_path: Path, runner: FakeSandboxRunner, **overrides: Any) -> LocalBackend:
    settings = Settings(data_dir=tmp_path, **overrides)
    return LocalBackend(settings, executor_factory=lambda _: runner, job_factory=fake_job)


def submission(backend: LocalBackend, code: str = "print(1)", **fields: Any) -> Any:
    return backend.resolver.resolve(ExecuteRequest(code=code, **fields))


async def test_jobs_run_in_order_and_long_poll_wakes_on_completion(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1)
    await backend.start()
    try:
        first = await backend.submit("default", submission(backend, "print('a')"))
        second = await backend.submit("default", submission(backend, "print('b')"))
        await asyncio.sleep(0.05)
        status = await backend.get_status("default", second.job_id)
        assert status.status == "pending" and status.queue_position == 1
        assert await backend.wait_for("default", first.job_id, 0.05) is None  # still gated
        runner.gate.set()
        record = await backend.wait_for("default", second.job_id, 5)
        assert record is not None and record.status == "succeeded" and record.stdout == "print('b')"
        assert runner.started == [first.job_id, second.job_id]
    finally:
        await backend.close()


async def test_idempotency_is_per_tenant_and_conflicts_on_a_different_payload(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, FakeSandboxRunner())
    await backend.start()
    try:
        key = "client-key-0001"
        a = await backend.submit("team-a", submission(backend, idempotency_key=key))
        again = await backend.submit("team-a", submission(backend, idempotency_key=key))
        assert again.job_id == a.job_id and not again.created
        other_tenant = await backend.submit("team-b", submission(backend, idempotency_key=key))
        assert other_tenant.job_id != a.job_id
        with pytest.raises(Conflict, match="Idempotency key reused with different payload"):
            await backend.submit("team-a", submission(backend, "print(2)", idempotency_key=key))
        with pytest.raises(NotFound):
            await backend.get_record("team-b", a.job_id)
    finally:
        await backend.close()


async def test_full_queue_refuses_without_burning_the_idempotency_key(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1, max_queue_size=1)
    await backend.start()
    try:
        await backend.submit("default", submission(backend, "print(1)"))
        await asyncio.sleep(0.05)  # the worker takes it: the queue is empty again
        await backend.submit("default", submission(backend, "print(2)"))
        with pytest.raises(Unavailable, match="queue is full"):
            await backend.submit("default", submission(backend, "print(3)", idempotency_key="retry-me-123"))
        runner.gate.set()
        await asyncio.sleep(0.1)
        accepted = await backend.submit(
            "default", submission(backend, "print(3)", idempotency_key="retry-me-123")
        )
        assert accepted.created
    finally:
        await backend.close()


async def test_cancel_queued_and_running_jobs(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1)
    await backend.start()
    try:
        running = await backend.submit("default", submission(backend, "print(1)"))
        queued = await backend.submit("default", submission(backend, "print(2)"))
        await asyncio.sleep(0.05)
        await backend.cancel("default", queued.job_id)
        await backend.cancel("default", running.job_id)
        for job_id in (running.job_id, queued.job_id):
            record = await backend.wait_for("default", job_id, 5)
            assert record is not None and record.status == "cancelled"
        assert runner.started == [running.job_id]  # the queued one never reached the sandbox
        with pytest.raises(NotFound, match="already completed"):
            await backend.cancel("default", running.job_id)
    finally:
        await backend.close()


async def test_queued_and_running_jobs_survive_a_restart(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1)
    await backend.start()
    ids = [(await backend.submit("default", submission(backend, f"print({i})"))).job_id for i in range(3)]
    await asyncio.sleep(0.05)
    await backend.close()  # one running, two queued: nothing is marked interrupted

    runner2 = FakeSandboxRunner()
    runner2.gate.set()
    restarted = make_backend(tmp_path, runner2, max_workers=1)
    await restarted.start()
    try:
        for job_id in ids:
            record = await restarted.wait_for("default", job_id, 5)
            assert record is not None and record.status == "succeeded", record
        assert runner2.started == ids
    finally:
        await restarted.close()


async def test_sandbox_infrastructure_failures_are_retried(tmp_path: Path) -> None:
    runner = FakeSandboxRunner(failures_left=1)
    runner.gate.set()
    backend = make_backend(tmp_path, runner, max_retry_attempts=2)
    await backend.start()
    try:
        job = await backend.submit("default", submission(backend))
        record = await backend.wait_for("default", job.job_id, 5)
        assert record is not None and record.status == "succeeded"
        assert runner.started == [job.job_id, job.job_id]
    finally:
        await backend.close()


async def test_rerun_and_fork_keep_the_parent_settings(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    runner.gate.set()
    backend = make_backend(tmp_path, runner, allow_runtime_requirements=True)
    await backend.start()
    try:
        parent_sub = submission(backend, "print(1)", timeout=7, startup_timeout=33, requirements=["six"])
        parent = await backend.submit("default", parent_sub)
        await backend.wait_for("default", parent.job_id, 5)
        rerun = await backend.rerun("default", parent.job_id, Overrides())
        fork = await backend.fork("default", parent.job_id, Overrides(code="print(2)", timeout=9))
        for child, code, timeout in ((rerun, "print(1)", 7), (fork, "print(2)", 9)):
            sub = await backend.get_submission("default", child.job_id)
            assert (sub.code, sub.timeout, sub.startup_timeout, sub.requirements) == (
                code,
                timeout,
                33,
                ["six"],
            )
            record = await backend.get_record("default", child.job_id)
            assert record.parent_execution_id == parent.job_id
        with pytest.raises(InvalidRequest, match="max_timeout"):
            await backend.fork("default", parent.job_id, Overrides(code="x=1", timeout=301))
    finally:
        await backend.close()


async def test_rerun_of_an_unfinished_job_is_refused(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, FakeSandboxRunner())
    await backend.start()
    try:
        job = await backend.submit("default", submission(backend))
        with pytest.raises(BadRequest, match="hasn't completed"):
            await backend.rerun("default", job.job_id, Overrides())
    finally:
        await backend.close()


async def test_history_pages_newest_first_with_filters(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    runner.gate.set()
    backend = make_backend(tmp_path, runner)
    await backend.start()
    try:
        ids = [(await backend.submit("default", submission(backend, f"print({i})"))).job_id for i in range(5)]
        for job_id in ids:
            await backend.wait_for("default", job_id, 5)
        page = await backend.list_records("default", RecordFilter(limit=2, offset=1))
        assert [r.execution_id for r in page.records] == [ids[3], ids[2]] and page.has_more
        done = await backend.list_records("default", RecordFilter(status="succeeded", limit=10))
        assert len(done.records) == 5 and not done.has_more
        assert (await backend.list_records("other", RecordFilter())).records == []
    finally:
        await backend.close()


async def test_retention_deletes_old_finished_records_and_their_files(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    runner.gate.set()
    backend = make_backend(tmp_path, runner, execution_record_ttl_days=1)
    await backend.start()
    old = await backend.submit("default", submission(backend, "print('old')"))
    await backend.wait_for("default", old.job_id, 5)
    fresh = await backend.submit("default", submission(backend, "print('new')"))
    await backend.wait_for("default", fresh.job_id, 5)
    await backend.close()
    run_dir = tmp_path / "runs" / old.job_id
    assert run_dir.exists()
    with sqlite3.connect(tmp_path / "tako_vm.sqlite3") as db:
        db.execute("UPDATE jobs SET created_at = '2000-01-01T00:00:00+00:00' WHERE job_id = ?", (old.job_id,))

    restarted = make_backend(tmp_path, FakeSandboxRunner(), execution_record_ttl_days=1)
    await restarted.start()
    try:
        with pytest.raises(NotFound):
            await restarted.get_record("default", old.job_id)
        assert (await restarted.get_record("default", fresh.job_id)).status == "succeeded"
        assert not run_dir.exists()
    finally:
        await restarted.close()


async def test_exhausted_sandbox_retries_become_internal_errors_listed_as_dead_letters(
    tmp_path: Path,
) -> None:
    runner = FakeSandboxRunner(failures_left=2)
    runner.gate.set()
    backend = make_backend(tmp_path, runner, max_retry_attempts=2)
    await backend.start()
    try:
        broken = await backend.submit("default", submission(backend, "print('infra')"))
        record = await backend.wait_for("default", broken.job_id, 10)
        assert record is not None and record.status == "failed"
        assert record.error is not None and record.error.type == "internal_error"
        assert "sandbox could not start" in record.error.message
        fine = await backend.submit("default", submission(backend, "print('ok')"))
        await backend.wait_for("default", fine.job_id, 5)
        assert [r.execution_id for r in await backend.dead_letters("default")] == [broken.job_id]
        assert await backend.dead_letters("other-tenant") == []
    finally:
        await backend.close()


async def test_a_cancel_is_durable_before_the_answer_and_never_requeued(tmp_path: Path) -> None:
    """Issue #19 finding 4: cancelling running jobs (200 ``cancelled``), then a SIGKILL and a restart,
    ran all of them again (the cancel only set an in-memory event)."""
    runner = FakeSandboxRunner()  # the gate stays closed: the jobs run until something stops them
    backend = make_backend(tmp_path, runner, max_workers=3)
    await backend.start()
    ids = [(await backend.submit("default", submission(backend, f"print({i})"))).job_id for i in range(3)]
    await asyncio.sleep(0.05)
    assert runner.started == ids  # all three running
    for job_id in ids:
        await backend.cancel("default", job_id)
        # What a server killed right now leaves on disk (no await in between: no worker ran since):
        with sqlite3.connect(tmp_path / "tako_vm.sqlite3") as db:
            (status,) = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        assert status == "cancelled"
    await backend.close()

    runner2 = FakeSandboxRunner()
    runner2.gate.set()
    restarted = make_backend(tmp_path, runner2, max_workers=3)
    await restarted.start()
    try:
        await asyncio.sleep(0.1)
        assert runner2.started == []  # never requeued
        for job_id in ids:
            record = await restarted.get_record("default", job_id)
            assert record.status == "cancelled"
    finally:
        await restarted.close()


TWO_TENANTS = {
    "api_auth_enabled": True,
    "api_keys": {"key-for-team-a-0001": "team-a", "key-for-team-b-0001": "team-b"},
}


async def test_one_tenant_cannot_fill_the_queue_for_the_others(tmp_path: Path) -> None:
    """Issue #19 finding 5: one tenant's 300 long jobs filled the global queue and every other tenant
    got 503 for hours. Its own cap now stops it first, with a 429 naming the limit."""
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1, max_queue_size=10, **TWO_TENANTS)
    await backend.start()
    try:
        await backend.submit("team-a", submission(backend, "print(0)"))
        await asyncio.sleep(0.05)  # running
        for i in range(5):  # half the queue
            await backend.submit("team-a", submission(backend, f"print({i + 1})"))
        with pytest.raises(RateLimited, match=r"Tenant 'team-a'.*tenant_max_queued_jobs=5") as refused:
            await backend.submit("team-a", submission(backend, "print(99)"))
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        for i in range(5):  # the other tenant still has room
            await backend.submit("team-b", submission(backend, f"print({i})"))
    finally:
        await backend.close()


async def test_workers_serve_tenants_fairly_not_in_submission_order(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    backend = make_backend(tmp_path, runner, max_workers=1, **TWO_TENANTS)
    await backend.start()
    try:
        a = [(await backend.submit("team-a", submission(backend, f"print({i})"))).job_id for i in range(5)]
        await asyncio.sleep(0.05)
        b = (await backend.submit("team-b", submission(backend, "print('b')"))).job_id
        runner.gate.set()
        for job_id in [*a, b]:
            assert await backend.wait_for(backend_tenant(job_id, b), job_id, 5) is not None
        assert runner.started == [a[0], b, *a[1:]]  # team-b waited for one job, not for the backlog
    finally:
        await backend.close()


def backend_tenant(job_id: str, b: str) -> str:
    return "team-b" if job_id == b else "team-a"


async def test_a_tenant_at_its_running_cap_leaves_workers_to_others() -> None:
    queue = FairQueue(running_cap=2)
    for i in range(3):
        queue.put("team-a", f"a{i}")
    assert [await queue.get(), await queue.get()] == [("team-a", "a0"), ("team-a", "a1")]
    third = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    assert not third.done()  # team-a is at its cap
    queue.put("team-b", "b0")
    assert await asyncio.wait_for(third, 1) == ("team-b", "b0")
    queue.discard("a2")
    queue.done("team-a")
    fourth = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    assert not fourth.done() and queue.empty()  # the discarded job never comes back
    fourth.cancel()


async def test_a_tenant_over_its_storage_quota_gets_507_and_the_others_do_not(tmp_path: Path) -> None:
    """Issue #19 finding 2: per-tenant storage needs a quota (history rows and artifact files)."""
    backend = make_backend(tmp_path, FakeSandboxRunner(), tenant_storage_quota_bytes=1_000_000, **TWO_TENANTS)
    await backend.start()
    try:
        blob = {"blob": "x" * 400_000}
        for _ in range(3):  # 1.2 MB stored, counted as it is submitted
            await backend.submit("team-a", submission(backend, input_data=blob))
        with pytest.raises(InsufficientStorage, match=r"Tenant 'team-a'.*tenant_storage_quota_bytes=1000000"):
            await backend.submit("team-a", submission(backend, input_data=blob))
        await backend.submit("team-b", submission(backend, input_data=blob))  # another tenant's quota
        assert await asyncio.to_thread(backend.store.tenant_usage, "team-a") > 1_200_000  # measured in SQLite
    finally:
        await backend.close()
