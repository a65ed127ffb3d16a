"""Idle cost suite (issue #20): CPU-seconds per second that a server and everything it started (its
sandboxes, their runsc processes) burn while nothing is submitted, read from /proc (``bench.proctree``).

Three servers, measured side by side in one window:
- ``fresh``: the shipped defaults, nothing ever submitted (the warm pool is sized by demand: empty);
- ``after_jobs``: a few jobs, then ``warm_pool_idle_seconds`` without one (the pool has drained);
- ``pool_kept_warm`` (the baseline, the behaviour before the pool was sized by demand): the same jobs,
  but a pool that never drains, i.e. ``warm_pool_size`` idle sandboxes."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from bench.harness import client, sdk_round_trip, server
from bench.proctree import tree_cpu, tree_size
from bench.stats import markdown_table, ratio

WARM_POOL = 2
DRAIN_AFTER_S = 5.0  # ``after_jobs``'s warm_pool_idle_seconds (the shipped default is 60)
TARGET_CPU_S_PER_S = 0.005


def idle_cost(root: Path, quick: bool) -> dict[str, Any]:
    window_s = 20.0 if quick else 60.0
    with contextlib.ExitStack() as stack:
        servers = {
            "fresh": stack.enter_context(server(root, "fresh", warm_pool_size=WARM_POOL)),
            "after_jobs": stack.enter_context(
                server(root, "after", warm_pool_size=WARM_POOL, warm_pool_idle_seconds=DRAIN_AFTER_S)
            ),
            "pool_kept_warm": stack.enter_context(
                server(root, "kept", warm_pool_size=WARM_POOL, warm_pool_idle_seconds=86_400)
            ),
        }
        for name in ("after_jobs", "pool_kept_warm"):
            sdk = client(servers[name])
            for _ in range(3):
                sdk_round_trip(sdk)
            sdk.close()
        time.sleep(DRAIN_AFTER_S + 5.0)  # drained, background teardowns done, the kept pool refilled
        pids = {name: srv.process.pid for name, srv in servers.items()}
        before = {name: tree_cpu([pid]) for name, pid in pids.items()}
        started = time.monotonic()
        time.sleep(window_s)
        after = {name: tree_cpu([pid]) for name, pid in pids.items()}
        elapsed = time.monotonic() - started
        processes = {name: tree_size(pid) for name, pid in pids.items()}
    rates = {name: round((after[name] - before[name]) / elapsed, 4) for name in pids}
    baseline = rates["pool_kept_warm"]
    rows = [
        [name, processes[name], rates[name], ratio(rates[name], baseline) if baseline > 0 else ""]
        for name in pids
    ]
    table = markdown_table(
        ["idle server (and its sandboxes)", "processes", "CPU-s per s", "/ pool kept warm"], rows
    )
    return {
        "window_s": round(elapsed, 1),
        "warm_pool_size": WARM_POOL,
        "cpu_s_per_s": rates,
        "processes": processes,
        "ratios": {
            "fresh_over_pool_kept_warm": ratio(rates["fresh"], baseline) if baseline > 0 else None,
            "after_jobs_over_pool_kept_warm": ratio(rates["after_jobs"], baseline) if baseline > 0 else None,
        },
        "targets": {
            "idle_at_most_0_005_cpu_s_per_s": max(rates["fresh"], rates["after_jobs"]) <= TARGET_CPU_S_PER_S
        },
        "table": table,
    }
