"""Load suites of the local backend: closed-loop throughput (1, 4, 16 clients) and queue growth
(100 then 1,000 jobs submitted at once). The arithmetic lives in ``bench.analysis``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tako_vm
from bench.analysis import (
    closed_loop_window,
    cpu_per_job_ms,
    process_cpu,
    queue_burst,
    queue_growth,
    queue_table,
    throughput_table,
)
from bench.harness import MemorySampler, client, sdk_round_trip, server
from bench.stats import rss_mib, summarize
from tako_vm.testing import LocalServer

# The server under load: the shipped defaults (4 workers, 2 warm sandboxes).
WORKERS = 4
WARM_POOL = 2
SUBMITTERS = 16  # client threads that submit a burst
SETTLE_S = 2.0  # after a drain: lets background sandbox teardown finish before CPU is read
STATUS_PROBES = 20  # GET /jobs/{id} of the last job of a burst, timed while the whole burst is queued


def _closed_loop(srv: LocalServer, clients: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    """``clients`` threads loop submit -> long-poll result; measured over ``window_s`` after ``warmup_s``."""
    rounds: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    sdks = [client(srv) for _ in range(clients)]

    def loop(sdk: tako_vm.Client) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            sdk_round_trip(sdk)
            with lock:
                rounds.append((started, time.perf_counter()))

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(loop, sdk) for sdk in sdks]
        time.sleep(warmup_s)
        cpu_before, low = process_cpu(srv.process.pid), time.perf_counter()
        time.sleep(window_s)
        cpu_after, high = process_cpu(srv.process.pid), time.perf_counter()
        stop.set()
        for future in futures:
            future.result()  # re-raises a failed round trip
    for sdk in sdks:
        sdk.close()
    result = closed_loop_window(rounds, clients, (low, high))
    result["cpu_per_job"] = cpu_per_job_ms(cpu_before, cpu_after, result["jobs"])
    return result


def throughput(root: Path, quick: bool) -> dict[str, Any]:
    """Jobs/s with 1, 4 and 16 closed-loop SDK clients, counted in a steady-state window."""
    warmup_s, window_s = (2.0, 5.0) if quick else (6.0, 16.0)
    levels: dict[str, Any] = {}
    with server(root, "throughput", warm_pool_size=WARM_POOL, max_workers=WORKERS) as srv:
        time.sleep(SETTLE_S)
        at_rest = rss_mib(srv.process.pid)
        with MemorySampler(srv.process.pid) as sampler:
            for clients in (1, 4, 16):
                levels[str(clients)] = _closed_loop(srv, clients, warmup_s, window_s)
        peak = sampler.peak
    table, ratios = throughput_table(levels)
    return {
        "workers": WORKERS,
        "warm_pool_size": WARM_POOL,
        "warmup_s": warmup_s,
        "window_s": window_s,
        "levels": levels,
        "ratios": ratios,
        "shim_rss_mib": {"at_rest": at_rest, "peak_under_load": peak},
        "table": table,
    }


def queue(root: Path, quick: bool) -> dict[str, Any]:
    """Q jobs submitted at once (Q = 100 then 1,000): all finish, none lost; per-job cost vs Q."""
    sizes = (10, 50) if quick else (100, 1000)
    bursts: dict[str, Any] = {}
    settings = {"warm_pool_size": WARM_POOL, "max_workers": WORKERS, "max_queue_size": max(sizes) + 100}
    with server(root, "queue", **settings) as srv:
        sdk = client(srv)
        for job_id in [sdk.submit_code("print(1)") for _ in range(2 * WORKERS)]:  # warm-up, not measured
            sdk.get_result(job_id, timeout=120)
        time.sleep(SETTLE_S)
        with MemorySampler(srv.process.pid) as sampler:
            for size in sizes:
                bursts[str(size)] = _burst(srv, sdk, size)
        sdk.close()
        peak = sampler.peak
    small, big = bursts[str(sizes[0])], bursts[str(sizes[1])]
    verdict = queue_growth(small, big)
    table = queue_table(small, big, verdict["growth"])
    return {
        "workers": WORKERS,
        "warm_pool_size": WARM_POOL,
        "bursts": bursts,
        **verdict,
        "shim_rss_mib_peak": peak,
        "table": table,
    }


def _burst(srv: LocalServer, sdk: tako_vm.Client, size: int) -> dict[str, Any]:
    submit_s: list[float] = []
    lock = threading.Lock()
    sdks = [client(srv) for _ in range(SUBMITTERS)]

    def submit(n: int) -> str:
        started = time.perf_counter()
        job_id: str = sdks[n % SUBMITTERS].submit_code("print(1)")
        with lock:
            submit_s.append(time.perf_counter() - started)
        return job_id

    cpu_before = process_cpu(srv.process.pid)
    with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
        job_ids = list(pool.map(submit, range(size)))
    for each in sdks:
        each.close()
    status_s: list[float] = []  # the queue position is computed per request: is that O(Q)?
    for _ in range(STATUS_PROBES):
        started = time.perf_counter()
        sdk.get_status(job_ids[-1])
        status_s.append(time.perf_counter() - started)
    deadline = time.monotonic() + 60 + size * 3
    while time.monotonic() < deadline:
        stats = sdk.pool_stats()
        if stats["pending"] == 0 and stats["running"] == 0:
            break
        time.sleep(0.25)
    time.sleep(SETTLE_S)
    cpu = cpu_per_job_ms(cpu_before, process_cpu(srv.process.pid), size)
    result = queue_burst(size, _records(sdk, set(job_ids)), submit_s, cpu)
    result["status_of_last_job"] = summarize(status_s)
    return result


def _records(sdk: tako_vm.Client, wanted: set[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = sdk.list_executions(limit=1000, offset=offset)
        found += [item for item in page["items"] if item["execution_id"] in wanted]
        if not page["has_more"] or len(found) == len(wanted):
            return found
        offset += 1000
