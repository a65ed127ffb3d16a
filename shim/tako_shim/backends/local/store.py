"""SQLite job history of the local backend (stdlib ``sqlite3``, WAL; call it through ``asyncio.to_thread``).

One row per job holds what was submitted (code, input, resolved settings: enough to run it again
after a restart, or to rerun/fork it) and, once terminal, the outcome as JSON. Terminal rows never
change: ``finish`` only updates a row that is not terminal yet. Every read is scoped by tenant.

A locked database or a full disk surfaces as ``StorageBusy``/``StorageFull`` (503 at the HTTP boundary),
never as a raw ``sqlite3.OperationalError``. A new job is refused while the database's file system has
less than ``reserve_bytes`` free: an accepted job still needs room for its outcome, and SQLite alone
would accept an insert that happens to fit in its WAL's spare frames on a disk already full.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako_shim.errors import STORAGE_BUSY, STORAGE_FULL, StorageBusy, StorageFull, StorageUnavailable
from tako_vm.models.wire import TERMINAL_STATUSES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    job_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    duration_ms INTEGER,
    code TEXT NOT NULL,
    input_json TEXT NOT NULL,
    requirements_json TEXT NOT NULL,
    timeout INTEGER NOT NULL,
    startup_timeout INTEGER NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT,
    correlation_id TEXT,
    parent_execution_id TEXT,
    relationship TEXT,
    code_hash TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    outcome_json TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_key ON jobs(tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_seq ON jobs(tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_tenant_parent ON jobs(tenant, parent_execution_id, seq);
"""
# Bytes of a stored outcome's ``output`` JSON (NULL without one; an unparsable outcome is left alone).
_OUTPUT_BYTES = (
    "(CASE WHEN outcome_json IS NOT NULL AND json_valid(outcome_json) "
    "THEN length(CAST(json_extract(outcome_json, '$.output') AS BLOB)) END)"
)
_TERMINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"
# Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
# Free space a new job needs on the database's file system (its outcome is written later).
DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024


def storage_error(exc: sqlite3.Error) -> StorageUnavailable | None:
    """The typed, transient error a SQLite failure stands for, or ``None`` if it is something else."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = str(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in message:
        return StorageBusy(STORAGE_BUSY, cause=message)
    if primary == _SQLITE_FULL or "database or disk is full" in message:
        return StorageFull(STORAGE_FULL, cause=message)
    return None


@dataclass
class JobRow:
    job_id: str
    tenant: str
    status: str
    job_type: str
    created_at: str
    code: str
    input_data: dict[str, Any]
    requirements: list[str]
    timeout: int
    startup_timeout: int
    code_hash: str
    input_hash: str
    started_at: str | None = None
    ended_at: str | None = None
    duration_ms: int | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    correlation_id: str | None = None
    parent_execution_id: str | None = None
    relationship: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)
    omitted_output_bytes: int | None = None  # list views: the output was left out; its JSON size


_COLUMNS = (
    "job_id, tenant, status, job_type, created_at, started_at, ended_at, duration_ms, code, input_json, "
    "requirements_json, timeout, startup_timeout, idempotency_key, fingerprint, correlation_id, "
    "parent_execution_id, relationship, code_hash, input_hash, outcome_json"
)


def _row(values: sqlite3.Row) -> JobRow:
    return JobRow(
        job_id=values["job_id"],
        tenant=values["tenant"],
        status=values["status"],
        job_type=values["job_type"],
        created_at=values["created_at"],
        started_at=values["started_at"],
        ended_at=values["ended_at"],
        duration_ms=values["duration_ms"],
        code=values["code"],
        input_data=json.loads(values["input_json"]),
        requirements=json.loads(values["requirements_json"]),
        timeout=values["timeout"],
        startup_timeout=values["startup_timeout"],
        idempotency_key=values["idempotency_key"],
        fingerprint=values["fingerprint"],
        correlation_id=values["correlation_id"],
        parent_execution_id=values["parent_execution_id"],
        relationship=values["relationship"],
        code_hash=values["code_hash"],
        input_hash=values["input_hash"],
        outcome=json.loads(values["outcome_json"]) if values["outcome_json"] else {},
    )


class JobStore:
    """A single SQLite connection guarded by a lock (statements are short; WAL keeps readers cheap)."""

    def __init__(
        self, path: Path, *, busy_timeout_seconds: float = 5.0, reserve_bytes: int = DEFAULT_RESERVE_BYTES
    ) -> None:
        """``busy_timeout_seconds``: how long a statement waits for another connection's lock;
        ``reserve_bytes``: the free space below which ``insert`` refuses new jobs."""
        self.path = path
        self.busy_timeout_seconds = busy_timeout_seconds
        self.reserve_bytes = reserve_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_seconds, check_same_thread=False, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("job store is not open")
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                typed = storage_error(exc)
                if typed is None:
                    raise
                raise typed from exc

    def _check_free_space(self) -> None:
        stats = os.statvfs(self.path.parent)
        free = stats.f_bavail * stats.f_frsize
        if free < self.reserve_bytes:
            limit = f"{self.reserve_bytes / (1024 * 1024):g} MiB"
            detail = f"The server is out of disk space: new jobs need {limit} free for their history. "
            detail += "Try again later."
            raise StorageFull(detail, cause=f"{free} bytes free on {self.path.parent}, below {limit}")

    def insert(self, row: JobRow) -> None:
        """Store a new job; ``StorageFull`` when its file system is below the reserve."""
        self._check_free_space()
        with self._db() as db:
            db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES ({','.join('?' * 21)})",
                (
                    row.job_id,
                    row.tenant,
                    row.status,
                    row.job_type,
                    row.created_at,
                    row.started_at,
                    row.ended_at,
                    row.duration_ms,
                    row.code,
                    json.dumps(row.input_data),
                    json.dumps(row.requirements),
                    row.timeout,
                    row.startup_timeout,
                    row.idempotency_key,
                    row.fingerprint,
                    row.correlation_id,
                    row.parent_execution_id,
                    row.relationship,
                    row.code_hash,
                    row.input_hash,
                    json.dumps(row.outcome) if row.outcome else None,
                ),
            )

    def get(self, tenant: str, job_id: str) -> JobRow | None:
        with self._db() as db:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id)
            ).fetchone()
        return _row(found) if found else None

    def get_any_tenant(self, job_id: str) -> JobRow | None:
        """For the worker only: it runs jobs of every tenant."""
        with self._db() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _row(found) if found else None

    def find_by_key(self, tenant: str, key: str) -> JobRow | None:
        with self._db() as db:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND idempotency_key = ?", (tenant, key)
            ).fetchone()
        return _row(found) if found else None

    def mark_running(self, job_id: str, started_at: str) -> bool:
        with self._db() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE job_id = ? AND status = 'queued'",
                (started_at, job_id),
            )
        return cursor.rowcount == 1

    def finish(
        self,
        job_id: str,
        *,
        status: str,
        ended_at: str,
        duration_ms: int | None,
        outcome: dict[str, Any],
    ) -> str | None:
        """Write the terminal state unless the row is already terminal; the job's type if written."""
        with self._db() as db:
            written = db.execute(
                "UPDATE jobs SET status = ?, ended_at = ?, duration_ms = ?, outcome_json = ? "
                f"WHERE job_id = ? AND status NOT IN {_TERMINAL_SQL} RETURNING job_type",
                (status, ended_at, duration_ms, json.dumps(outcome), job_id),
            ).fetchall()
        return str(written[0][0]) if written else None

    def requeue_unfinished(self) -> list[tuple[str, str]]:
        """At start-up: running jobs go back to queued (the process restarted, not the job failed).

        Returns every queued job as ``(job_id, tenant)``, oldest first.
        """
        with self._db() as db:
            db.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'")
            rows = db.execute(
                "SELECT job_id, tenant FROM jobs WHERE status = 'queued' ORDER BY seq"
            ).fetchall()
        return [(r["job_id"], r["tenant"]) for r in rows]

    def list_rows(
        self,
        tenant: str,
        *,
        status: str | None,
        job_type: str | None,
        limit: int,
        offset: int,
        inline_output_bytes: int | None = None,
        session_id: str | None = None,
    ) -> list[JobRow]:
        """Newest first. Outputs longer than ``inline_output_bytes`` are removed inside SQLite (a page
        of large results is never loaded into memory) and their size is set on the row."""
        clauses, params = ["tenant = ?"], [tenant]
        if status:
            clauses.append("status = ?")
            params.append(status)
        if job_type:
            clauses.append("job_type = ?")
            params.append(job_type)
        if session_id:  # a session's executions are its children with relationship 'session'
            clauses.append("parent_execution_id = ? AND relationship = 'session'")
            params.append(session_id)
        where = " AND ".join(clauses)
        if inline_output_bytes is None:
            sql = f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
            with self._db() as db:
                rows = db.execute(sql, (*params, limit, offset)).fetchall()
            return [_row(r) for r in rows]
        slim = _COLUMNS.replace(
            "outcome_json",
            f"CASE WHEN {_OUTPUT_BYTES} > ? THEN json_remove(outcome_json, '$.output') ELSE outcome_json END "
            f"AS outcome_json, {_OUTPUT_BYTES} AS output_bytes",
        )
        sql = f"SELECT {slim} FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
        with self._db() as db:
            rows = db.execute(sql, (inline_output_bytes, *params, limit, offset)).fetchall()
        found = []
        for values in rows:
            row = _row(values)
            size = values["output_bytes"]
            if size is not None and size > inline_output_bytes:
                row.omitted_output_bytes = size
            found.append(row)
        return found

    def tenant_usage(self, tenant: str) -> int:
        """Bytes one tenant keeps: code, input and outcome rows plus the artifact files they list."""
        with self._db() as db:
            (used,) = db.execute(
                "SELECT COALESCE(SUM(length(code) + length(input_json) + COALESCE(length(outcome_json), 0)"
                " + COALESCE((SELECT SUM(json_extract(value, '$.size_bytes'))"
                " FROM json_each(outcome_json, '$.artifacts')), 0)), 0) FROM jobs WHERE tenant = ?",
                (tenant,),
            ).fetchone()
        return int(used)

    def delete_finished_before(self, cutoff_iso: str) -> list[str]:
        """Retention: delete terminal rows created before ``cutoff_iso``; returns their ids."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT job_id FROM jobs WHERE created_at < ? AND status IN {_TERMINAL_SQL}",
                (cutoff_iso,),
            ).fetchall()
            db.execute(f"DELETE FROM jobs WHERE created_at < ? AND status IN {_TERMINAL_SQL}", (cutoff_iso,))
        return [r["job_id"] for r in rows]
