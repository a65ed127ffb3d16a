"""`python -m bench [--quick] [--only SUITE ...] [--out DIR]`: run the suites, print their tables, and
write DIR/latest.json and DIR/latest.md (default: bench/results/)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import local, operator_bench, shim
from bench.stats import machine

SUITES: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "latency": local.latency,
    "throughput": local.throughput,
    "queue": local.queue_growth,
    "shim": shim.shim_overheads,
    "operator": operator_bench.operator_suite,
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sample sizes (about a minute per suite)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for latest.json / latest.md")
    return parser.parse_args(argv)


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
        lines += [f"## {name} ({result.get('seconds', '?')} s)", ""]
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
    failed = False
    root = Path(tempfile.mkdtemp(prefix="tako-bench-"))
    try:
        for name in names:
            print(f"== {name} ({'quick' if args.quick else 'full'}) ...", flush=True)
            started = time.monotonic()
            try:
                result = SUITES[name](root / name, args.quick)
            except Exception:
                failed = True
                result = {"error": traceback.format_exc()}
                print(result["error"], file=sys.stderr)
            result["seconds"] = round(time.monotonic() - started, 1)
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
