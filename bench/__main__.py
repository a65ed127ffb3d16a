"""`python -m bench [--quick] [--only SUITE ...] [--out DIR]`: run the suites, print their tables, and
write DIR/latest.json and DIR/latest.md (default: bench/results/).

With ``--only``, the other suites' results already in DIR/latest.json are kept (each suite records its
own start time and load average), so one suite can be re-run without losing the rest; ``--fresh``
starts an empty report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import floor, idle, load, local, operator_bench, reference, requirements_cache, shim, snapshots
from bench.stats import machine

SUITES: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "latency": local.latency,
    "throughput": load.throughput,
    "queue": load.queue,
    "shim": shim.shim_overheads,
    "operator": operator_bench.operator_suite,
    "requirements": requirements_cache.requirements_cache,
    "idle": idle.idle_cost,
    "snapshots": snapshots.snapshot_suite,
    "floor": floor.floor_suite,
    "reference": reference.reference_suite,
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sample sizes (about a minute per suite)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for latest.json / latest.md")
    parser.add_argument("--fresh", action="store_true", help="with --only: drop earlier suites' results")
    return parser.parse_args(argv)


def earlier_suites(path: Path, quick: bool) -> dict[str, Any]:
    """Suites of an earlier report of the same kind (quick or full), or nothing if it is unreadable."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict) or report.get("quick") != quick:
        return {}
    suites = report.get("suites")
    return dict(suites) if isinstance(suites, dict) else {}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Benchmark results ({'quick' if report['quick'] else 'full'} run, {report['started_at']})",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"Python {m['python']}, load average at start {m['loadavg_at_start']}.",
        "",
    ]
    for name, result in report["suites"].items():
        when = (
            f", started {result['started_at']}, load {result.get('loadavg_at_start')}"
            if "started_at" in result
            else ""
        )
        lines += [f"## {name} ({result.get('seconds', '?')} s{when})", ""]
        if "error" in result:
            lines += ["FAILED: " + result["error"].splitlines()[-1], ""]
            continue
        lines += [result.get("table", ""), ""]
        for key in ("ratios", "growth", "targets"):
            if key in result:
                lines += [f"{key}: `{json.dumps(result[key])}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SUITES)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "suites": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only and not args.fresh:
        kept = earlier_suites(args.out / "latest.json", args.quick)
        report["suites"] = {name: kept[name] for name in SUITES if name in kept and name not in names}
    failed = False
    root = Path(tempfile.mkdtemp(prefix="tako-bench-"))
    try:
        for name in names:
            print(f"== {name} ({'quick' if args.quick else 'full'}) ...", flush=True)
            started = time.monotonic()
            stamp = {
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "loadavg_at_start": load_average(),
            }
            try:
                result = SUITES[name](root / name, args.quick)
            except Exception:
                failed = True
                result = {"error": traceback.format_exc()}
                print(result["error"], file=sys.stderr)
            result.update(stamp, seconds=round(time.monotonic() - started, 1))
            report["suites"][name] = result
            if "table" in result:
                print(result["table"])
            for key in ("ratios", "growth", "targets"):
                if key in result:
                    print(f"{key}: {json.dumps(result[key])}")
            print(flush=True)
            (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
            (args.out / "latest.md").write_text(render_markdown(report) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"results: {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
