"""Local backend latency suite (vs bare runsc and host python); throughput and queue growth are in
``bench.load``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import BareRunsc, client, host_python_once, sdk_round_trip, server
from bench.latency_parts import DirectExecutor, interleaved
from bench.stats import markdown_table, ratio, rss_mib, summarize

THINK_TIME_S = 0.3  # between rounds, like an agent between tool calls; lets the warm pool refill


def latency(root: Path, quick: bool) -> dict[str, Any]:
    """submit -> result of print(1) through the SDK (warm pool on / off), interleaved with a bare
    ``runsc run`` of the same code, the executor called directly (no server) and ``python3 -c`` on the
    host, in a random order per round."""
    rounds = 6 if quick else 30
    bare = BareRunsc(root / "bare")
    direct = DirectExecutor(root / "direct")
    with (
        server(root, "warm", warm_pool_size=2) as warm_srv,
        server(root, "cold", warm_pool_size=0) as cold_srv,
    ):
        warm_sdk, cold_sdk = client(warm_srv), client(cold_srv)
        methods = {
            "sdk_warm_pool": lambda: sdk_round_trip(warm_sdk),
            "sdk_no_pool": lambda: sdk_round_trip(cold_sdk),
            "executor_no_pool": direct.once,
            "bare_runsc": bare.once,
            "host_python": host_python_once,
        }
        for method in methods.values():  # warm-up: first sandboxes, imports, connections
            method()
        time.sleep(2)
        samples = interleaved(methods, rounds, THINK_TIME_S)
        shim_rss = {"warm": rss_mib(warm_srv.process.pid), "no_pool": rss_mib(cold_srv.process.pid)}
        warm_sdk.close()
        cold_sdk.close()
        direct.close()
    stats = {name: summarize(values) for name, values in samples.items()}
    bare_p50 = stats["bare_runsc"]["p50_ms"]
    ratios = {
        "sdk_no_pool_p50_over_bare_runsc_p50": ratio(stats["sdk_no_pool"]["p50_ms"], bare_p50),
        "executor_no_pool_p50_over_bare_runsc_p50": ratio(stats["executor_no_pool"]["p50_ms"], bare_p50),
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
