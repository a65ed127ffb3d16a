"""Requirement cache suite (issue #20): submit -> result of a repeat job with cached requirements
(numpy) against the same job without requirements, side by side on the same servers, interleaved."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import tako_vm
from bench.harness import client, server
from bench.latency_parts import interleaved
from bench.stats import markdown_table, ratio, summarize

REQUIREMENTS = ["numpy"]


def _job(sdk: tako_vm.Client, code: str, requirements: list[str] | None, expect: str) -> float:
    started = time.perf_counter()
    job_id = sdk.submit_code(code, requirements=requirements, startup_timeout=600)
    record = sdk.get_result(job_id, timeout=900)
    elapsed = time.perf_counter() - started
    if record["status"] != "succeeded" or record["stdout"] != expect:
        raise RuntimeError(f"benchmark job did not succeed: {record}")
    return elapsed


def requirements_cache(root: Path, quick: bool) -> dict[str, Any]:
    """print(1) with and without ``requirements: ["numpy"]`` (cache filled by one first job, timed
    separately), on a server without a warm pool (both cold sandboxes) and with one (the job without
    requirements takes a warm sandbox; jobs with requirements never do)."""
    rounds = 5 if quick else 20
    settings = {"allow_runtime_requirements": True}
    with (
        server(root, "cold", warm_pool_size=0, **settings) as cold_srv,
        server(root, "warm", warm_pool_size=2, **settings) as warm_srv,
    ):
        cold, warm = client(cold_srv), client(warm_srv)
        first = {
            "cold": _job(cold, "print(1)", REQUIREMENTS, "1\n"),
            "warm": _job(warm, "print(1)", REQUIREMENTS, "1\n"),
        }
        methods = {
            "no_requirements_cold": lambda: _job(cold, "print(1)", None, "1\n"),
            "cached_numpy_cold": lambda: _job(cold, "print(1)", REQUIREMENTS, "1\n"),
            "no_requirements_warm_pool": lambda: _job(warm, "print(1)", None, "1\n"),
            "cached_numpy_warm_server": lambda: _job(warm, "print(1)", REQUIREMENTS, "1\n"),
            "cached_numpy_import_cold": lambda: _job(cold, "import numpy; print(1)", REQUIREMENTS, "1\n"),
        }
        samples = interleaved(methods, rounds, 0.3)
        cold.close()
        warm.close()
    stats = {name: summarize(values) for name, values in samples.items()}
    p50 = {name: s["p50_ms"] for name, s in stats.items()}
    ratios = {
        "cached_numpy_over_no_requirements_cold_p50": ratio(
            p50["cached_numpy_cold"], p50["no_requirements_cold"]
        ),
        "cached_numpy_over_no_requirements_warm_pool_p50": ratio(
            p50["cached_numpy_warm_server"], p50["no_requirements_warm_pool"]
        ),
        "first_numpy_job_over_cached_cold_p50": ratio(first["cold"] * 1000, p50["cached_numpy_cold"]),
    }
    rows = [[name, s["n"], s["p50_ms"], s["p95_ms"], s["p99_ms"]] for name, s in stats.items()]
    rows += [
        [f"first numpy job ({name}, installs)", 1, round(t * 1000, 1), "", ""] for name, t in first.items()
    ]
    table = markdown_table(["submit->result", "n", "p50 ms", "p95 ms", "p99 ms"], rows)
    return {
        "rounds": rounds,
        "stats": stats,
        "first_job_s": first,
        "ratios": ratios,
        "targets": {
            "cached_requirements_at_most_1_5x": ratios["cached_numpy_over_no_requirements_cold_p50"] <= 1.5
        },
        "table": table,
    }
