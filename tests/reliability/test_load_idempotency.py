"""Load: 1,000 submissions from 50 concurrent clients with idempotency keys and injected retries,
against a real server process (strict mode: every job runs in its own runsc sandbox, 4 workers).

Retries are injected three ways, as a flaky network produces them: a re-POST after a response that
"got lost" (sequential), two racing POSTs of the same key (concurrent), and a POST whose client gave
up before the answer (0.05 s client timeout) followed by a normal retry. Every retry must be answered
with the same job, every job must end exactly once, and the history must hold exactly 1,000 records.
Job code is a one-line print: the sandbox start dominates, which is what this measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tako_vm.testing import local_server

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

JOBS = int(os.environ.get("TAKO_LOAD_JOBS", "1000"))
CLIENTS = 50
SETTINGS = {
    "security_mode": "strict",
    "max_workers": 4,
    "max_queue_size": 2000,
    "api_rate_limit_enabled": False,
}


async def submit_with_retries(http: httpx.AsyncClient, n: int, stats: Counter[str]) -> str:
    body = {"code": f"print({n})", "idempotency_key": f"load-{n:06d}-key"}
    if n % 5 == 1:  # a retry racing the original
        first, second = await asyncio.gather(
            http.post("/execute/async", json=body), http.post("/execute/async", json=body)
        )
        stats["racing retries"] += 1
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.json()["job_id"] == second.json()["job_id"], "a racing retry got another job"
        return str(first.json()["job_id"])
    if n % 5 == 2:  # the client gives up before the answer, then retries
        with contextlib.suppress(httpx.TimeoutException):
            await http.post("/execute/async", json=body, timeout=0.05)
        stats["abandoned then retried"] += 1
    response = await http.post("/execute/async", json=body)
    assert response.status_code == 200, response.text
    job_id = str(response.json()["job_id"])
    if n % 5 == 3:  # the response "got lost": the same POST again
        again = await http.post("/execute/async", json=body)
        stats["repeated after success"] += 1
        assert again.status_code == 200 and again.json()["job_id"] == job_id, again.text
    return job_id


async def client(url: str, numbers: list[int], ids: dict[int, str], stats: Counter[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for n in numbers:
            ids[n] = await submit_with_retries(http, n, stats)


async def collect(url: str, ids: dict[int, str]) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    gate = asyncio.Semaphore(CLIENTS)

    async def one(http: httpx.AsyncClient, n: int) -> None:
        async with gate:
            while True:
                response = await http.get(f"/jobs/{ids[n]}/result", params={"wait": "true", "timeout": 300})
                if response.status_code != 408:
                    break
            assert response.status_code == 200, response.text
            records[n] = response.json()

    async with httpx.AsyncClient(base_url=url, timeout=330) as http:
        await asyncio.gather(*(one(http, n) for n in ids))
    return records


@pytest.mark.timeout(1500)  # ~4 min on a quiet 2-core machine; much longer when it is shared
def test_1000_submissions_from_50_clients_with_retries_run_exactly_once(
    tmp_path: Path, runsc_path: str
) -> None:
    stats: Counter[str] = Counter()
    ids: dict[int, str] = {}
    with local_server(tmp_path, SETTINGS, env={"PATH": runsc_path}) as server:
        started = time.monotonic()

        async def submit_all() -> None:
            await asyncio.gather(
                *(client(server.url, list(range(c, JOBS, CLIENTS)), ids, stats) for c in range(CLIENTS))
            )

        asyncio.run(submit_all())
        submitted = time.monotonic() - started
        records = asyncio.run(collect(server.url, ids))
        finished = time.monotonic() - started
        listing = httpx.get(f"{server.url}/executions", params={"limit": 1000}, timeout=60).json()

    assert len(ids) == JOBS and len(set(ids.values())) == JOBS, "each key maps to its own single job"
    statuses = Counter(r["status"] for r in records.values())
    assert statuses == {"succeeded": JOBS}, statuses
    assert all(records[n]["stdout"] == f"{n}\n" for n in ids), "each job ran its own code"
    assert all(records[n]["execution_id"] == ids[n] for n in ids)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "tako_vm.sqlite3")) as db:
        rows = db.execute("SELECT idempotency_key, status FROM jobs").fetchall()
    assert len(rows) == JOBS and len({key for key, _ in rows}) == JOBS, "exactly one record per key"
    assert {status for _, status in rows} == {"succeeded"}
    assert listing["count"] == min(JOBS, 1000)
    print(
        f"\nload: {JOBS} jobs, {CLIENTS} clients, retries {dict(stats)}; all submitted in {submitted:.1f} s, "
        f"all finished in {finished:.1f} s ({JOBS / finished:.1f} jobs/s)"
    )
