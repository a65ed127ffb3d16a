"""Local backend suites: latency (vs bare runsc and host python), throughput, queue growth."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import BareRunsc, MemorySampler, client, host_python_once, sdk_round_trip, server
from bench.stats import markdown_table, ratio, rss_mib, summarize

THINK_TIME_S = 0.3  # between rounds, like an agent between tool calls; lets the warm pool refill


def latency(root: Path, quick: bool) -> dict[str, Any]:
    """submit -> result of print(1) through the SDK (warm pool on / off), interleaved with a bare
    ``runsc run`` of the same code and ``python3 -c`` on the host, in a random order per round."""
    rounds = 6 if quick else 30
    bare = BareRunsc(root / "bare")
    with (
        server(root, "warm", warm_pool_size=2) as warm_srv,
        server(root, "cold", warm_pool_size=0) as cold_srv,
    ):
        warm_sdk, cold_sdk = client(warm_srv), client(cold_srv)
        methods = {
            "sdk_warm_pool": lambda: sdk_round_trip(warm_sdk),
            "sdk_no_pool": lambda: sdk_round_trip(cold_sdk),
            "bare_runsc": bare.once,
            "host_python": host_python_once,
        }
        for method in methods.values():  # warm-up: first sandboxes, imports, connections
            method()
        time.sleep(2)
        samples: dict[str, list[float]] = {name: [] for name in methods}
        order = list(methods)
        rng = random.Random(7)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                samples[name].append(methods[name]())
                time.sleep(THINK_TIME_S)
        shim_rss = {"warm": rss_mib(warm_srv.process.pid), "no_pool": rss_mib(cold_srv.process.pid)}
        warm_sdk.close()
        cold_sdk.close()
    stats = {name: summarize(values) for name, values in samples.items()}
    bare_p50 = stats["bare_runsc"]["p50_ms"]
    ratios = {
        "sdk_no_pool_p50_over_bare_runsc_p50": ratio(stats["sdk_no_pool"]["p50_ms"], bare_p50),
        "sdk_warm_pool_p50_over_bare_runsc_p50": ratio(stats["sdk_warm_pool"]["p50_ms"], bare_p50),
        "sdk_no_pool_p99_over_bare_runsc_p99": ratio(
            stats["sdk_no_pool"]["p99_ms"], stats["bare_runsc"]["p99_ms"]
        ),
        "bare_runsc_p50_over_host_python_p50": ratio(bare_p50, stats["host_python"]["p50_ms"]),
        "sdk_warm_pool_p50_over_host_python_p50": ratio(
            stats["sdk_warm_pool"]["p50_ms"], stats["host_python"]["p50_ms"]
        ),
    }
    rows = [
        [name, s["n"], s["p50_ms"], s["p95_ms"], s["p99_ms"], ratio(s["p50_ms"], bare_p50)]
        for name, s in stats.items()
    ]
    table = markdown_table(
        ["print(1) submit->result", "n", "p50 ms", "p95 ms", "p99 ms", "p50 / bare runsc"], rows
    )
    return {
        "rounds": rounds,
        "think_time_s": THINK_TIME_S,
        "stats": stats,
        "ratios": ratios,
        "targets": {
            "overhead_over_bare_runsc_under_15pct": ratios["sdk_warm_pool_p50_over_bare_runsc_p50"] < 1.15,
            "overhead_without_pool_under_15pct": ratios["sdk_no_pool_p50_over_bare_runsc_p50"] < 1.15,
            "warm_pool_p50_under_100ms": stats["sdk_warm_pool"]["p50_ms"] < 100,
        },
        "shim_rss_mib_after": shim_rss,
        "table": table,
    }


def _clients_run(url_client: Any, clients: int, jobs_each: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        sdk = url_client()
        try:
            for _ in range(jobs_each):
                elapsed = sdk_round_trip(sdk)
                with lock:
                    latencies.append(elapsed)
        finally:
            sdk.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(work, range(clients)))
    return time.perf_counter() - started, latencies


def throughput(root: Path, quick: bool) -> dict[str, Any]:
    """Jobs per second with 1, 4 and 16 concurrent SDK clients (each: submit, wait, repeat)."""
    total = {1: 4, 4: 8, 16: 16} if quick else {1: 16, 4: 32, 16: 48}
    levels: dict[str, Any] = {}
    with server(root, "throughput", warm_pool_size=2, max_workers=4) as srv:
        time.sleep(2)
        at_rest = rss_mib(srv.process.pid)
        with MemorySampler(srv.process.pid) as sampler:
            for clients, jobs in total.items():
                elapsed, latencies = _clients_run(lambda: client(srv), clients, max(1, jobs // clients))
                levels[str(clients)] = {
                    "jobs": len(latencies),
                    "seconds": round(elapsed, 2),
                    "jobs_per_s": round(len(latencies) / elapsed, 2),
                    "latency": summarize(latencies),
                }
        peak = sampler.peak
    base = levels["1"]["jobs_per_s"]
    rows = [
        [c, v["jobs"], v["jobs_per_s"], ratio(v["jobs_per_s"], base), v["latency"]["p50_ms"]]
        for c, v in levels.items()
    ]
    table = markdown_table(["clients", "jobs", "jobs/s", "vs 1 client", "p50 ms"], rows)
    return {"levels": levels, "shim_rss_mib": {"at_rest": at_rest, "peak_under_load": peak}, "table": table}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def queue_growth(root: Path, quick: bool) -> dict[str, Any]:
    """Q jobs submitted at once (Q = 100 then 1,000): all must finish, none lost; how p50 grows."""
    sizes = [10, 40] if quick else [100, 1000]
    results: dict[str, Any] = {}
    with server(root, "queue", warm_pool_size=2, max_workers=4, max_queue_size=max(sizes) + 100) as srv:
        sdk = client(srv)
        time.sleep(2)
        with MemorySampler(srv.process.pid) as sampler:
            for size in sizes:
                results[str(size)] = _one_queue(srv, sdk, size)
        sdk.close()
        peak = sampler.peak
    small, big = (results[str(s)] for s in sizes)
    growth = {
        "queue_ratio": sizes[1] / sizes[0],
        "p50_ratio": ratio(big["end_to_end"]["p50_ms"], small["end_to_end"]["p50_ms"]),
        "submit_p50_ratio": ratio(big["submit"]["p50_ms"], small["submit"]["p50_ms"]),
        "per_job_drain_ratio": ratio(big["drain_s_per_job"], small["drain_s_per_job"]),
        "run_p50_ratio": ratio(big["run"]["p50_ms"], small["run"]["p50_ms"]),
    }
    rows = [
        [size, r["finished"], r["lost"], r["submit"]["p50_ms"], r["run"]["p50_ms"], r["end_to_end"]["p50_ms"],
         r["drain_s_per_job"]]
        for size, r in results.items()
    ]  # fmt: skip
    table = markdown_table(
        [
            "queued at once",
            "finished",
            "lost",
            "submit p50 ms",
            "run p50 ms",
            "end-to-end p50 ms",
            "drain s/job",
        ],
        rows,
    )
    return {
        "sizes": results,
        "growth": growth,
        "targets": {
            "none_lost": all(r["lost"] == 0 for r in results.values()),
            "p50_sub_linear": growth["p50_ratio"] < growth["queue_ratio"],
        },
        "shim_rss_mib_peak": peak,
        "table": table,
    }


def _one_queue(srv: Any, sdk: Any, size: int) -> dict[str, Any]:
    submit_times: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def submit(_: int) -> str:
        if not hasattr(local, "sdk"):
            local.sdk = client(srv)
        started = time.perf_counter()
        job_id: str = local.sdk.submit_code("print(1)")
        with lock:
            submit_times.append(time.perf_counter() - started)
        return job_id

    started = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        job_ids = list(pool.map(submit, range(size)))
    deadline = time.monotonic() + 60 + size * 3
    while time.monotonic() < deadline:
        stats = sdk.pool_stats()
        if stats["pending"] == 0 and stats["running"] == 0:
            break
        time.sleep(0.5)
    drained = time.time() - started
    wanted = set(job_ids)
    records: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = sdk.list_executions(limit=1000, offset=offset)
        for item in page["items"]:
            if item["execution_id"] in wanted:
                records[item["execution_id"]] = item
        if not page["has_more"]:
            break
        offset += 1000
    finished = [r for r in records.values() if r["status"] == "succeeded"]
    end_to_end = [_ts(r["ended_at"]) - _ts(r["created_at"]) for r in finished]
    run = [_ts(r["ended_at"]) - _ts(r["started_at"]) for r in finished]
    return {
        "submitted": len(job_ids),
        "finished": len(finished),
        "lost": size - len(finished),
        "statuses": sorted({r["status"] for r in records.values()}),
        "drain_seconds": round(drained, 2),
        "drain_s_per_job": round(drained / size, 3),
        "submit": summarize(submit_times),
        "run": summarize(run) if run else None,
        "end_to_end": summarize(end_to_end) if end_to_end else None,
    }
