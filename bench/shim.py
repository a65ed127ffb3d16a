"""Shim suites: list_executions at 10,000 records (vs 10), and what a long-poll costs.

History is seeded straight into the server's SQLite store (``tako_shim.backends.local.store.JobStore``, the
same code the server uses) before the server starts: running 10,000 sandboxes is not the point here.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.harness import client, sdk_round_trip, server
from bench.stats import markdown_table, ratio, rss_mib, summarize

STATUSES = ["succeeded"] * 8 + ["failed", "timeout"]


def seed_history(data_dir: Path, count: int) -> None:
    """``count`` finished records of the default tenant, 10% failed/timeout, with realistic outcomes."""
    from tako_shim.backends.local.store import JobRow, JobStore
    from tako_shim.submission import canonical_json, sha256_hex

    store = JobStore(data_dir / "tako_vm.sqlite3")
    store.open()
    rng = random.Random(count)
    start = datetime.now(UTC) - timedelta(days=1)
    # One transaction around the store's own insert/finish calls (the store autocommits each
    # statement): 10,000 records take about a second instead of ~16 s on this machine.
    assert store._conn is not None
    store._conn.execute("BEGIN")
    try:
        for n in range(count):
            created = start + timedelta(seconds=n)
            code = f"print({n})"
            status = rng.choice(STATUSES)
            row = JobRow(
                job_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                tenant="default",
                status="queued",
                job_type="default",
                created_at=created.isoformat(),
                code=code,
                input_data={"n": n},
                requirements=[],
                timeout=30,
                startup_timeout=120,
                code_hash=sha256_hex(code),
                input_hash=sha256_hex(canonical_json({"n": n})),
            )
            store.insert(row)
            failed = status != "succeeded"
            outcome = {
                "exit_code": 1 if failed else 0,
                "stdout": f"{n}\n",
                "stderr": "Traceback ...\nValueError: x\n" if failed else "",
                "output": {"n": n},
                "error": {"type": "value_error", "message": "ValueError: x", "phase": "execution"}
                if failed
                else None,
                "timing": {"startup_ms": 40, "dep_install_ms": 0, "execution_ms": 20, "total_ms": 300},
                "runtime": "runsc",
            }
            store.finish(
                row.job_id,
                status=status,
                ended_at=(created + timedelta(milliseconds=300)).isoformat(),
                duration_ms=300,
                outcome=outcome,
            )
        store._conn.execute("COMMIT")
    finally:
        store.close()


def _time_get(http: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    response = http.get(path)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def shim_overheads(root: Path, quick: bool) -> dict[str, Any]:
    big = 2_000 if quick else 10_000
    small = 100  # one full page: both sides serialise the same 100 records
    repeats = 10 if quick else 20
    for name, count in (("big", big), ("small", small)):
        (root / name / "state").mkdir(parents=True, exist_ok=True)
        seed_history(root / name / "state", count)
    queries = {
        "first page (limit=100)": "/executions?limit=100",
        "filtered (status=failed, limit=100)": "/executions?status=failed&limit=100",
        "full view (limit=100)": "/executions?limit=100&view=full",
    }
    with (
        server(root, "big", warm_pool_size=0) as big_srv,
        server(root, "small", warm_pool_size=1) as small_srv,
        httpx.Client(base_url=big_srv.url, timeout=60) as big_http,
        httpx.Client(base_url=small_srv.url, timeout=60) as small_http,
    ):
        rss_big = rss_mib(big_srv.process.pid)
        rss_small = rss_mib(small_srv.process.pid)
        queries[f"last page (offset={big - 100})"] = f"/executions?limit=100&offset={big - 100}"
        listing: dict[str, dict[str, Any]] = {}
        for label, path in queries.items():
            small_path = path if "offset" not in path else "/executions?limit=100&offset=0"
            samples: dict[str, list[float]] = {"big": [], "small": []}
            for http in (big_http, small_http):  # warm-up
                http.get(path)
            for _ in range(repeats):  # interleaved
                samples["big"].append(_time_get(big_http, path))
                samples["small"].append(_time_get(small_http, small_path))
            listing[label] = {"big": summarize(samples["big"]), "small": summarize(samples["small"])}
        long_poll = _long_poll(small_srv, small_http, 5 if quick else 10)
    rows = [
        [label, v["small"]["p50_ms"], v["big"]["p50_ms"], ratio(v["big"]["p50_ms"], v["small"]["p50_ms"])]
        for label, v in listing.items()
    ]
    table = markdown_table(
        ["GET /executions", f"p50 ms at {small} records", f"p50 ms at {big} records", "ratio"], rows
    )
    lp = long_poll
    table += "\n\n" + markdown_table(
        ["long-poll", "p50 ms", "p95 ms"],
        [
            ["GET result of a finished job, plain", lp["plain"]["p50_ms"], lp["plain"]["p95_ms"]],
            ["same with wait=true (long-poll)", lp["wait"]["p50_ms"], lp["wait"]["p95_ms"]],
            ["job end -> long-poll answer received", lp["wake"]["p50_ms"], lp["wake"]["p95_ms"]],
        ],
    )
    return {
        "records": {"big": big, "small": small},
        "list_executions": listing,
        "long_poll": long_poll,
        "ratios": {
            "list_first_page_big_over_small": ratio(
                listing["first page (limit=100)"]["big"]["p50_ms"],
                listing["first page (limit=100)"]["small"]["p50_ms"],
            ),
            "long_poll_finished_over_plain": ratio(lp["wait"]["p50_ms"], lp["plain"]["p50_ms"]),
        },
        "shim_rss_mib_at_rest": {"big_history": rss_big, "small_history": rss_small},
        "table": table,
    }


def _long_poll(srv: Any, http: httpx.Client, jobs: int) -> dict[str, Any]:
    """Cost of a long-poll on a finished job vs a plain GET, and the wake-up delay after a job ends
    (client receive time minus the server's ``ended_at``; same machine, same clock)."""
    sdk = client(srv)
    wake: list[float] = []
    finished_ids: list[str] = []
    try:
        sdk_round_trip(sdk)
        for _ in range(jobs):
            job_id = sdk.submit_code("import time\ntime.sleep(0.3)\nprint(1)")
            record = sdk.get_result(job_id, timeout=120)
            received = time.time()
            wake.append(received - datetime.fromisoformat(record["ended_at"]).timestamp())
            finished_ids.append(job_id)
            time.sleep(0.3)
        plain: list[float] = []
        waited: list[float] = []
        for job_id in finished_ids * 2:
            plain.append(_time_get(http, f"/jobs/{job_id}/result"))
            waited.append(_time_get(http, f"/jobs/{job_id}/result?wait=true&timeout=30"))
    finally:
        sdk.close()
    return {"plain": summarize(plain), "wait": summarize(waited), "wake": summarize(wake)}
