"""The console's Sessions pages and session filter over the backend interface: which sessions are listed,
a session's executions in order with their result, the live part's cheap "nothing new" answer, tenant
scoping, escaping, and the local store's ``session_id`` filter on real SQLite.

The session service and the record listing are small stand-ins here (a real session needs runsc: the
browser test ``tests/integration/test_console_browser.py`` drives real sessions through these pages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tako_shim.backends.base import RecordFilter, RecordPage, Submission
from tako_shim.backends.local import records
from tako_shim.backends.local.store import JobRow, JobStore
from tako_shim.config import Settings
from tako_shim.errors import NotFound
from tako_shim.http.common import BACKEND_KEY
from tako_shim.http.console import add_console, views
from tako_shim.http.console.routes import CSP
from tako_shim.http.middleware import SETTINGS_KEY
from tako_vm.models.sessions import SessionInfo
from tako_vm.models.wire import ExecutionRecordFull


def info(session_id: str, status: str = "ready", executions: int = 0, **more: Any) -> SessionInfo:
    return SessionInfo(
        session_id=session_id,
        status=status,  # type: ignore[arg-type]
        created_at=more.pop("created_at", "2026-12-05T10:00:00+00:00"),
        expires_at="2026-12-05T11:00:00+00:00",
        executions=executions,
        **more,
    )


@dataclass
class Sessions:
    """Stand-in session service: the tenant scoping rule of the real ones (another tenant's: NotFound)."""

    owned: dict[str, tuple[str, SessionInfo]]
    calls: list[str] = field(default_factory=list)

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        return [s for owner, s in self.owned.values() if owner == tenant]

    async def get(self, tenant: str, session_id: str) -> SessionInfo:
        self.calls.append(f"get {tenant} {session_id}")
        owner, found = self.owned.get(session_id, (None, None))
        if owner != tenant or found is None:
            raise NotFound("Session not found")
        return found


@dataclass
class Backend:
    sessions: Sessions | None
    cells: list[ExecutionRecordFull]  # newest first, as list_records answers
    codes: dict[str, str]
    queries: list[RecordFilter] = field(default_factory=list)

    async def list_records(self, tenant: str, query: RecordFilter) -> RecordPage:
        self.queries.append(query)
        found = [r for r in self.cells if r.session_id == query.session_id]
        return RecordPage(records=found[: query.limit], has_more=len(found) > query.limit)

    async def get_submission(self, tenant: str, job_id: str) -> Submission:
        return Submission(
            code=self.codes[job_id], input_data={}, job_type="default", timeout=30,
            startup_timeout=0, requirements=[], correlation_id=None,
        )  # fmt: skip


def cell(n: int, session_id: str, **more: Any) -> ExecutionRecordFull:
    fields: dict[str, Any] = {
        "execution_id": f"e{n}", "status": "succeeded", "job_type": "default",
        "created_at": f"2026-12-05T10:00:0{n}+00:00", "session_id": session_id, "duration_ms": 5 * n,
    }  # fmt: skip
    return ExecutionRecordFull.model_validate({**fields, **more})


async def get(backend: Backend, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    app = web.Application()
    app[SETTINGS_KEY] = Settings()  # authentication off: the console is the "default" tenant
    app[BACKEND_KEY] = backend  # type: ignore[assignment]
    add_console(app)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path, headers=headers or {})
        if response.status == 200:
            assert response.headers["Content-Security-Policy"] == CSP
        return response.status, await response.text()


def sessions_backend() -> Backend:
    owned = {
        "sess-open": ("default", info("sess-open", executions=2, job_type="<b>jt</b>")),
        "sess-done": (
            "default",
            info("sess-done", "ended", 1, end_reason="idle", ended_at="2026-12-05T10:30"),
        ),
        "sess-theirs": ("team-b", info("sess-theirs", executions=1)),
    }
    cells = [  # newest first
        cell(2, "sess-open", stdout="<script>x()</script>\n", session_result="'<i>42</i>'"),
        cell(
            1, "sess-open", status="failed", error={"type": "NameError", "message": "name 'y' is not defined"}
        ),
        cell(3, "sess-theirs", stdout="secret\n"),
    ]
    codes = {"e1": "y", "e2": "print('<script>x()</script>')\n'<i>42</i>'", "e3": "print('secret')"}
    return Backend(Sessions(owned), cells, codes)


async def test_the_sessions_page_lists_the_tenants_open_and_ended_sessions_escaped() -> None:
    status, text = await get(sessions_backend(), "/console/sessions")
    assert status == 200
    assert 'href="/console/sessions/sess-open"' in text and 'href="/console/sessions/sess-done"' in text
    assert "sess-theirs" not in text
    assert "&lt;b&gt;jt&lt;/b&gt;" in text and "<b>jt</b>" not in text
    assert text.index('id="sessions"') < text.index("sess-open") < text.index('id="ended-sessions"')
    assert text.index('id="ended-sessions"') < text.index("sess-done")
    assert '<a href="/console/sessions">Sessions</a>' in text  # in the navigation


async def test_without_a_session_service_the_pages_are_404_and_not_in_the_navigation() -> None:
    backend = sessions_backend()
    backend.sessions = None  # e.g. the kubernetes backend before PythonSession
    status, text = await get(backend, "/console/sessions")
    assert status == 404 and "Sessions are not available" in text
    assert 'href="/console/executions">Executions</a>' in text  # the navigation is there, without Sessions
    assert 'href="/console/sessions"' not in text
    assert (await get(backend, "/console/sessions/sess-open"))[0] == 404


async def test_a_session_page_shows_its_executions_in_order_with_output_result_and_error() -> None:
    backend = sessions_backend()
    status, text = await get(backend, "/console/sessions/sess-open")
    assert status == 200
    assert backend.queries[-1].session_id == "sess-open"
    assert text.index('data-id="e1"') < text.index('data-id="e2"')  # oldest first
    assert "[1]" in text and "[2]" in text
    assert "NameError" in text and "name &#39;y&#39; is not defined" in text
    assert "&lt;script&gt;x()&lt;/script&gt;" in text and "<script>x()" not in text
    assert "Out[2]:</span> &#39;&lt;i&gt;42&lt;/i&gt;&#39;" in text
    assert "secret" not in text  # another session's execution
    assert 'href="/console/executions?session_id=sess-open"' in text
    assert 'hx-trigger="every 2s"' in text  # open: the executions part polls itself
    done = (await get(backend, "/console/sessions/sess-done"))[1]
    assert "hx-trigger" not in done and "idle" in done  # ended: nothing left to poll


async def test_another_tenants_session_is_404_and_shows_nothing_of_it() -> None:
    backend = sessions_backend()
    status, text = await get(backend, "/console/sessions/sess-theirs")
    assert status == 404 and "secret" not in text
    assert backend.queries == []  # refused before any record is read
    assert backend.sessions is not None and backend.sessions.calls == ["get default sess-theirs"]


async def test_a_poll_that_finds_nothing_new_is_a_204_without_reading_records() -> None:
    backend = sessions_backend()
    part = {"HX-Request": "true"}
    status, text = await get(backend, "/console/sessions/sess-open?part=executions&mark=ready.2", part)
    assert (status, text) == (204, "") and backend.queries == []
    status, text = await get(backend, "/console/sessions/sess-open?part=executions&mark=ready.1", part)
    assert status == 200 and text.startswith('<section id="session"') and "<html" not in text
    assert "mark=ready.2" in text  # the next poll asks with what this part shows


def test_session_marks_change_with_the_status_and_the_executions_shown() -> None:
    ready = info("s", executions=3)
    assert views.session_unchanged(ready, views.session_mark(ready, 3, False))
    assert not views.session_unchanged(ready, views.session_mark(ready, 2, False))  # a row not yet written
    assert views.session_unchanged(ready, views.session_mark(ready, 200, True))  # more than the page shows
    paused = info("s", "paused", 3)
    assert not views.session_unchanged(paused, views.session_mark(ready, 3, False))
    assert not views.session_unchanged(ready, None)
    listed = [
        info("a"),
        info("b", "ended", ended_at="2"),
        info("c", "ended", ended_at="9"),
        info("d", "paused"),
    ]
    open_, ended = views.split_sessions(listed)
    assert {s.session_id for s in open_} == {"a", "d"}
    assert [s.session_id for s in ended] == ["c", "b"]  # most recently ended first
    many = [info(f"x{i}", "ended", ended_at=f"{i:03}") for i in range(50)]
    assert len(views.split_sessions(many)[1]) == views.ENDED_SESSIONS_SHOWN


def test_the_session_filter_is_checked_and_kept_in_links() -> None:
    good = views.parse_filters({"session_id": "sess-0123abcd", "status": "failed"})
    assert good.session_id == "sess-0123abcd" and not good.scans  # the backend filters it
    assert good.query(page=2) == {"status": "failed", "session_id": "sess-0123abcd", "page": "2"}
    bad = views.parse_filters({"session_id": "x' OR 1=1 --"})
    assert bad.session_id is None and any(p.startswith("session_id:") for p in bad.problems)


def test_the_local_store_lists_one_sessions_executions_with_their_result(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.open()
    try:

        def row(job_id: str, tenant: str, parent: str | None, relationship: str | None) -> JobRow:
            return JobRow(
                job_id=job_id, tenant=tenant, status="succeeded", job_type="default",
                created_at="2026-12-05T10:00:00+00:00", code="1 + 1", input_data={}, requirements=[],
                timeout=30, startup_timeout=0, code_hash="h", input_hash="h", parent_execution_id=parent,
                relationship=relationship, outcome={"stdout": "", "session_result": "2"},
            )  # fmt: skip

        for job_id, tenant, parent, relationship in [
            ("c1", "a", "sess-1", "session"),
            ("other", "a", "sess-2", "session"),
            ("rerun", "a", "sess-1", "rerun"),  # same parent id, not a session execution
            ("c2", "a", "sess-1", "session"),
            ("theirs", "b", "sess-1", "session"),  # another tenant
        ]:
            store.insert(row(job_id, tenant, parent, relationship))
        found = store.list_rows("a", status=None, job_type=None, limit=10, offset=0, session_id="sess-1")
        assert [r.job_id for r in found] == ["c2", "c1"]  # newest first, this tenant's, this session's
        record = records.record_from_row(found[0])
        assert (record.session_id, record.session_result, record.parent_execution_id) == ("sess-1", "2", None)
        everything = store.list_rows("a", status=None, job_type=None, limit=10, offset=0)
        assert len(everything) == 4
    finally:
        store.close()
