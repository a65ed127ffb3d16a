"""Template snapshot suite (issue #20), side by side in one run:

- throughput of ``print(1)`` through the server (snapshots on, shipped pool) at concurrency 8 against
  bare ``runsc do python3 -c 'print(1)'`` at concurrency 4, with CPU-seconds per job for both (the
  server's process tree; the bare runs' reaped children);
- a job type with ``requirements: [pandas]`` and ``preload: [pandas]``: ``import pandas as pd;
  print(pd.__version__)`` submit -> result p50 against a bare cold ``runsc run`` of the same interpreter
  with the same installed pandas bound at /deps;
- a job on an empty pool (``warm_pool_size: 0``: every job a fresh restore) p50 against a bare
  ``runsc run`` of ``print(1)`` in the product's sandbox shape.

CPU per job counts everything on both sides, including what runsc leaves behind (its gofer and systrap
stubs outlive the ``runsc`` process that started them; reaped by init they would be lost: about 0.03
CPU-s per restore, 0.02 per cold run): the server runs under ``bench/subreaper.py`` (``tree_cpu`` of the
subreaper), and the bare loop runs while this process adopts and reaps those orphans
(``subreaper.adopting_orphans``; ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tako_vm
from bench.harness import HOST_PYTHON, BareRunsc, client, closed_loop, sdk_round_trip, server
from bench.latency_parts import interleaved
from bench.proctree import tree_cpu
from bench.stats import markdown_table, ratio, summarize
from bench.subreaper import adopting_orphans
from tako_vm.testing import LocalServer

PANDAS_CODE = "import pandas as pd; print(pd.__version__)"
PANDAS_TYPE = {"name": "df", "requirements": ["pandas"], "preload": ["pandas"], "memory_limit": "1g"}
SERVER_CLIENTS = 8
BARE_CLIENTS = 4
TEMPLATE_WAIT_S = 600.0
SETTLE_S = 2.0  # after a loop: the background teardown of its last sandboxes


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _bare_do(bare: BareRunsc) -> Callable[[], None]:
    ex = bare.executor
    assert ex.runsc is not None
    argv = [ex.runsc, "--root", str(ex._state_dir), f"--platform={ex.platform}", "--network=none", "do"]

    def once() -> None:
        out = subprocess.run([*argv, HOST_PYTHON, "-c", "print(1)"], capture_output=True, timeout=120)
        if out.returncode != 0 or out.stdout != b"1\n":
            raise RuntimeError(f"runsc do: rc={out.returncode} {out.stdout!r} {out.stderr[-300:]!r}")

    return once


def _templates(srv: LocalServer) -> list[dict[str, Any]]:
    shapes = []
    for meta in (srv.data_dir / "state" / "snapshots").glob("*/meta.json"):
        try:
            shapes.append(json.loads(meta.read_text())["shape"])
        except (OSError, ValueError, KeyError):
            continue
    return shapes


def _wait_template(
    srv: LocalServer, matches: Callable[[dict[str, Any]], bool], nudge: Callable[[], Any]
) -> None:
    """Run ``nudge`` (a job of the shape) until the server has a template image for it."""
    deadline = time.monotonic() + TEMPLATE_WAIT_S
    while not any(matches(shape) for shape in _templates(srv)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot template after {TEMPLATE_WAIT_S:.0f} s: {_templates(srv)}")
        nudge()
        time.sleep(1.0)


def _pandas_job(sdk: tako_vm.Client) -> float:
    started = time.perf_counter()
    record = sdk.get_result(sdk.submit_code(PANDAS_CODE, job_type="df", startup_timeout=600), timeout=900)
    elapsed = time.perf_counter() - started
    if record["status"] != "succeeded" or not record["stdout"].strip():
        raise RuntimeError(f"pandas job did not succeed: {record}")
    return elapsed


def _deps_of(srv: LocalServer) -> Path:
    found = sorted((srv.data_dir / "state" / "work" / "requirements").glob("tenant-*/*/deps"))
    if not found:
        raise RuntimeError("no installed pandas in the server's requirement cache")
    return found[0]


def snapshot_suite(root: Path, quick: bool) -> dict[str, Any]:
    warmup_s, window_s = (3.0, 8.0) if quick else (6.0, 20.0)
    rounds = 5 if quick else 15
    bare = BareRunsc(root / "bare")
    default_shape = lambda shape: shape["preload"] != ["pandas"]  # noqa: E731
    pandas_shape = lambda shape: shape["preload"] == ["pandas"]  # noqa: E731
    with (
        server(root, "load", subreaped=True) as load_srv,  # shipped defaults: max_workers derived
        server(root, "empty", warm_pool_size=0, job_types=[PANDAS_TYPE]) as empty_srv,
    ):
        load_sdk = [client(load_srv) for _ in range(SERVER_CLIENTS)]
        max_workers = int(load_sdk[0].pool_stats()["max_workers"])  # the effective (derived) value
        empty_sdk = client(empty_srv)
        _wait_template(load_srv, default_shape, lambda: sdk_round_trip(load_sdk[0]))
        _wait_template(empty_srv, default_shape, lambda: sdk_round_trip(empty_sdk))
        _wait_template(empty_srv, pandas_shape, lambda: _pandas_job(empty_sdk))
        deps = _deps_of(empty_srv)

        # throughput, the server at 8 clients and bare `runsc do` at 4, one after the other; CPU over
        # each whole loop (and the server's background teardown after it) per job of that loop
        turn = iter(range(10**9))
        cpu0 = tree_cpu([load_srv.process.pid])
        next_client = lambda _i: load_sdk[next(turn) % SERVER_CLIENTS]  # noqa: E731
        server_jobs, server_s, server_all = closed_loop(
            lambda i: sdk_round_trip(next_client(i)), SERVER_CLIENTS, warmup_s, window_s
        )
        time.sleep(SETTLE_S)
        server_cpu = tree_cpu([load_srv.process.pid]) - cpu0
        bare_do = _bare_do(bare)
        with adopting_orphans():  # the bare runs' gofers and stubs are reaped here and counted
            cpu1 = _children_cpu()
            bare_jobs, bare_s, bare_all = closed_loop(lambda _i: bare_do(), BARE_CLIENTS, warmup_s, window_s)
        bare_cpu = _children_cpu() - cpu1

        # latency: interleaved, one at a time
        methods = {
            "pandas_preloaded_job": lambda: _pandas_job(empty_sdk),
            "bare_runsc_import_pandas": lambda: bare.once(PANDAS_CODE, deps, _pandas_version(deps)),
            "empty_pool_job": lambda: sdk_round_trip(empty_sdk),
            "bare_runsc_run": lambda: bare.once(),
        }
        samples = interleaved(methods, rounds, 0.3)
        for sdk in [*load_sdk, empty_sdk]:
            sdk.close()
    stats = {name: summarize(values) for name, values in samples.items()}
    p50 = {name: s["p50_ms"] for name, s in stats.items()}
    server_rate, bare_rate = server_jobs / server_s, bare_jobs / bare_s
    cpu_per_job = {"server": server_cpu / max(1, server_all), "bare_runsc_do": bare_cpu / max(1, bare_all)}
    ratios = {
        "throughput_server_c8_over_bare_do_c4": ratio(server_rate, bare_rate),
        "pandas_preloaded_over_bare_import_p50": ratio(
            p50["pandas_preloaded_job"], p50["bare_runsc_import_pandas"]
        ),
        "empty_pool_over_bare_runsc_run_p50": ratio(p50["empty_pool_job"], p50["bare_runsc_run"]),
        "cpu_per_job_server_over_bare_do": ratio(cpu_per_job["server"], cpu_per_job["bare_runsc_do"]),
    }
    rows = [
        [
            f"print(1) through the server, 8 clients, max_workers {max_workers}",
            f"{server_rate:.2f} jobs/s",
            f"{cpu_per_job['server']:.3f}",
        ],
        [
            "bare runsc do print(1), 4 at a time",
            f"{bare_rate:.2f} jobs/s",
            f"{cpu_per_job['bare_runsc_do']:.3f}",
        ],
    ]
    rows += [[name, f"p50 {s['p50_ms']} ms (p95 {s['p95_ms']}, n {s['n']})", ""] for name, s in stats.items()]
    rows += [[name, f"{value:g}", ""] for name, value in ratios.items()]
    table = markdown_table(["measure", "value", "CPU-s/job"], rows)
    return {
        "warmup_s": warmup_s,
        "window_s": window_s,
        "rounds": rounds,
        "server_max_workers": max_workers,
        "jobs_in_window": {"server": server_jobs, "bare_runsc_do": bare_jobs},
        "jobs_per_s": {"server": server_rate, "bare_runsc_do": bare_rate},
        "cpu_per_job_s": cpu_per_job,
        "stats": stats,
        "ratios": ratios,
        "targets": {
            "throughput_at_least_1_3x": ratios["throughput_server_c8_over_bare_do_c4"] >= 1.3,
            "pandas_at_most_0_3x": ratios["pandas_preloaded_over_bare_import_p50"] <= 0.3,
            "empty_pool_at_most_1_0x": ratios["empty_pool_over_bare_runsc_run_p50"] <= 1.0,
        },
        "table": table,
    }


def _pandas_version(deps: Path) -> bytes:
    """What ``print(pd.__version__)`` prints for the pandas installed in ``deps``."""
    found = sorted(deps.glob("pandas-*.dist-info"))
    if not found:
        raise RuntimeError(f"no pandas in {deps}")
    return found[0].name[len("pandas-") : -len(".dist-info")].encode() + b"\n"
