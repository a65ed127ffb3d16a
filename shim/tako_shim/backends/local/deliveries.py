"""Webhook deliveries of the local backend, in the job history's SQLite database (table
``webhook_deliveries``, one row per job with a webhook), through the job store's one connection.

The row is written before the job's own row, so a job that exists always has its delivery; a delivery
is due only once its job's terminal state is in the ``jobs`` table (a join), i.e. after the outcome is
durable, and it survives restarts of the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tako_shim.backends.local import records
from tako_shim.backends.local.store import JobRow, JobStore
from tako_vm.delivery.state import Delivery, webhook_id_for
from tako_vm.models.wire import TERMINAL_STATUSES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    job_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status_code INTEGER,
    last_error TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    window_ends_at REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
"""
_FIELDS = (
    "job_id, tenant, url, webhook_id, state, attempts, last_status_code, last_error, next_attempt_at, "
    "window_ends_at, delivered_at"
)
_TERMINAL_SQL = "(" + ",".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)) + ")"


def _delivery(values: Any) -> Delivery:
    return Delivery(**{name.strip(): values[name.strip()] for name in _FIELDS.split(",")})


class DeliveryTable:
    """Blocking calls (run them on the backend's SQLite thread)."""

    def __init__(self, store: Callable[[], JobStore]) -> None:
        self._store = store  # looked up at each call: the backend's store may be replaced (tests)

    @property
    def store(self) -> JobStore:
        return self._store()

    def open(self) -> None:
        """At start-up (before any submission): create the table, drop deliveries whose job is gone."""
        with self.store._db() as db:
            db.executescript(_SCHEMA)
        self.drop_orphans()

    def add(self, delivery: Delivery) -> None:
        self.save(delivery)

    def save(self, d: Delivery) -> None:
        with self.store._db() as db:
            db.execute(
                f"INSERT OR REPLACE INTO webhook_deliveries ({_FIELDS}) VALUES ({','.join('?' * 11)})",
                (
                    d.job_id, d.tenant, d.url, d.webhook_id, d.state, d.attempts, d.last_status_code,
                    d.last_error, d.next_attempt_at, d.window_ends_at, d.delivered_at,
                ),
            )  # fmt: skip

    def get(self, job_id: str) -> Delivery | None:
        with self.store._db() as db:
            found = db.execute(
                f"SELECT {_FIELDS} FROM webhook_deliveries WHERE job_id = ?", (job_id,)
            ).fetchone()
        return _delivery(found) if found else None

    def due(self, now: float, limit: int) -> list[Delivery]:
        columns = ", ".join(f"d.{name.strip()}" for name in _FIELDS.split(","))
        with self.store._db() as db:
            rows = db.execute(
                f"SELECT {columns} FROM webhook_deliveries d JOIN jobs j ON j.job_id = d.job_id "
                f"WHERE d.state IN ('waiting', 'pending') AND d.next_attempt_at <= ? "
                f"AND j.status IN {_TERMINAL_SQL} ORDER BY d.next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [_delivery(r) for r in rows]

    def finished_row(self, job_id: str) -> JobRow | None:
        row = self.store.get_any_tenant(job_id)
        return row if row is not None and row.status in TERMINAL_STATUSES else None

    def drop_orphans(self) -> int:
        """Deliveries whose job is gone (retention, or a job insert that failed after its delivery's)."""
        with self.store._db() as db:
            cursor = db.execute(
                "DELETE FROM webhook_deliveries WHERE job_id NOT IN (SELECT job_id FROM jobs)"
            )
        return cursor.rowcount


class LocalDeliveries:
    """The dispatcher's ``DeliveryStore`` over ``DeliveryTable``, on the backend's SQLite thread."""

    def __init__(self, table: DeliveryTable, run_db: Callable[..., Awaitable[Any]]) -> None:
        self.table = table
        self._db = run_db

    async def due(self, now: float, limit: int) -> list[Delivery]:
        found: list[Delivery] = await self._db(self.table.due, now, limit)
        return found

    async def save(self, delivery: Delivery) -> None:
        await self._db(self.table.save, delivery)

    async def record(self, delivery: Delivery) -> dict[str, Any] | None:
        row = await self._db(self.table.finished_row, delivery.job_id)
        if row is None:
            return None
        built = await asyncio.to_thread(records.record_from_row, row)
        return built.model_dump(mode="json")


def new_delivery(job_id: str, tenant: str, url: str) -> Delivery:
    return Delivery(job_id=job_id, tenant=tenant, url=url, webhook_id=webhook_id_for(job_id))
