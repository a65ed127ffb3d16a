"""Does the operator's RSS keep growing burst after burst, or level off? One operator against its own
emulator (the operator suite's harness): N bursts of 1,000 PythonJobs, each burst's jobs deleted before
the next (as the suite's repeat does); RSS after each burst and each deletion, CPU seconds per burst.

    .venv/bin/python -m bench.operator_repeat OUT_DIR [BURSTS] [--baseline]

`--baseline`: the tree at $TAKO_BENCH_OPERATOR_BASELINE (default operator_bench.BASELINE_REV) instead
of this one. Results: docs/performance.md ("Fifth round", "Sixth round")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.operator_bench import (
    _delete_jobs,
    _fast_harness,
    _job,
    _wait_pods,
    baseline_tree,
    cpu_seconds,
    operator_argv,
)
from bench.stats import rss_mib

BURST = 1000
CAP_S = 120.0


def repeat(root: Path, bursts: int, baseline: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with _fast_harness("tako-bench") as kube:
        tree = baseline_tree(root) if baseline else None
        argv, env = operator_argv(tree, kube.kubeconfig(root), kube.namespace)
        with (root / "operator.log").open("wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                kube.create("pythonjobs", _job("warmup"))
                if not _wait_pods(kube, 1, CAP_S):
                    raise RuntimeError("the operator did not reconcile a first PythonJob")
                time.sleep(1.0)
                print(
                    f"{'baseline' if baseline else 'this tree'}: at rest {rss_mib(process.pid)} MiB",
                    flush=True,
                )
                created, previous = 1, []
                for number in range(bursts):
                    if previous:
                        print(
                            f"  after deleting them: {_delete_jobs(kube, previous, process.pid)} MiB",
                            flush=True,
                        )
                    names = [f"r{number}-{n}" for n in range(BURST)]
                    cpu, started = cpu_seconds(process.pid) or 0.0, time.perf_counter()
                    for name in names:
                        kube.create("pythonjobs", _job(name))
                    created += BURST
                    complete = _wait_pods(kube, created, CAP_S)
                    wall = time.perf_counter() - started
                    time.sleep(1.0)
                    used = (cpu_seconds(process.pid) or 0.0) - cpu
                    print(
                        f"burst {number + 1}: complete={complete} {BURST / wall:.1f} jobs/s, "
                        f"CPU {used:.2f} s, RSS {rss_mib(process.pid)} MiB",
                        flush=True,
                    )
                    previous = names
            finally:
                process.terminate()
                process.wait(timeout=20)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--baseline"]
    repeat(Path(args[0]), int(args[1]) if len(args) > 1 else 5, "--baseline" in sys.argv)
