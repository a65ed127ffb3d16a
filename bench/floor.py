"""The floor of "one fresh gVisor sandbox per job" (issue #20), side by side in one run.

One job at a time, the methods interleaved in a new random order every round, each job's wall time and
its *whole* CPU cost counted: this process is a child subreaper (``PR_SET_CHILD_SUBREAPER``) while the
suite runs, so runsc's gofer and the systrap stub processes, which outlive the ``runsc`` process that
started them and are otherwise reaped by init (``bench/proctree.py`` and ``RUSAGE_CHILDREN`` lose them),
are reaped here and counted. CPU per job = this process's own CPU (the executor runs in it) plus every
reaped descendant's, from just before the job to after its teardown.

- ``cold_python``: ``runsc run`` of ``python3 -u /code/main.py`` (``print(1)``) in the product's sandbox
  shape (``BareRunsc``), the issue's baseline;
- ``cold_true``: ``runsc run`` of ``/bin/true`` in the same shape: the sandbox alone, no interpreter;
- ``product_restored``: ``LocalExecutor.run`` of ``print(1)`` from its template snapshot, host side
  and background teardown included (the server's path for a job without a warm sandbox);
- ``minimal_restored``: an attached ``runsc restore`` of a one-interpreter image whose pid 1 is a
  Python that waits for one stdin line, then prints ``1``: what *any* design that restores a fresh
  sandbox per job pays at least (no runner, no second interpreter, no host bookkeeping).

The ratios against ``cold_python`` say how far a fresh restore per job can go on this host and runsc:
a throughput of 1.3x ``runsc do`` on saturated cores needs a job to cost at most 1/1.3 = 0.77x of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import HOST_PYTHON, BareRunsc
from bench.latency_parts import interleaved
from bench.stats import markdown_table, ratio, summarize

PR_SET_CHILD_SUBREAPER = 36
MINIMAL_PID1 = 'import os, sys\nos.write(1, b"READY\\n")\nsys.stdin.readline()\nprint(1)\n'
REAP_WAIT_S = 5.0


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap_all() -> int:
    """Reap every child (orphaned gofers and stubs included) until none is left, at most REAP_WAIT_S;
    how many were reaped. Only for a process whose every child belongs to the measurement."""
    reaped, deadline = 0, time.monotonic() + REAP_WAIT_S
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            time.sleep(0.01)
        else:
            reaped += 1
    raise RuntimeError(f"children still running {REAP_WAIT_S:.0f} s after a job")


def cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(job: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """``job`` (returning the wall time of its critical part: until the result, not the teardown) as a
    method returning (wall s, CPU s); every child is reaped before CPU is read."""

    def once() -> tuple[float, float]:
        cpu0 = cpu_now()
        wall = job()
        reap_all()
        return wall, cpu_now() - cpu0

    return once


class Floor:
    """The sandboxes of the suite, built with the product's own executor (same rootfs, mounts, limits)."""

    def __init__(self, root: Path) -> None:
        from tako_shim.backends.local.sandbox.executor import LocalExecutor

        self.ex = LocalExecutor(
            work_dir=root / "work", security_mode="strict", snapshot_dir=root / "snapshots"
        )
        self.bare = BareRunsc(root / "bare")
        self.artifacts = Path(tempfile.mkdtemp(prefix="floor-artifacts-", dir=root))
        self.loop = asyncio.new_event_loop()
        self.minimal_image = root / "minimal-image"

    def close(self) -> None:
        self.loop.run_until_complete(self.ex.drain())
        self.loop.close()

    def _job(self, code: str = "print(1)") -> Any:
        from tako_shim.backends.local.sandbox.executor import SandboxJob

        return SandboxJob(f"floor-{secrets.token_hex(4)}", code, {}, [], 30, 60)

    def _bundle(self, cid: str, args: list[str]) -> tuple[Path, Path]:
        """A job directory and the product's run bundle in it, with ``args`` as the sandbox's process."""
        job_dir = Path(tempfile.mkdtemp(prefix="floor-", dir=self.ex._jobs_dir))
        for sub in ("code", "input"):
            (job_dir / sub).mkdir()
            (job_dir / sub).chmod(0o755)
        job_dir.chmod(0o755)
        (job_dir / "code" / "main.py").write_text("print(1)")
        bundle = self.ex._write_bundle(job_dir, "run", cid, None, self._job(), None)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = args
        (bundle / "config.json").write_text(json.dumps(spec))
        return job_dir, bundle

    def build_minimal(self) -> None:
        """Checkpoint a sandbox whose pid 1 is a Python blocked on stdin (the same shape as a job's)."""
        cid = f"tako-floor-tmpl-{secrets.token_hex(4)}"
        job_dir, bundle = self._bundle(cid, [HOST_PYTHON, "-I", "-S", "-c", MINIMAL_PID1])
        runsc = self.ex._runsc_argv(None, "none")
        shutil.rmtree(self.minimal_image, ignore_errors=True)
        self.minimal_image.mkdir()
        proc = subprocess.Popen(
            [*runsc, "run", "-detach", "--bundle", str(bundle), cid],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            if proc.stdout.readline() != b"READY\n":
                raise RuntimeError("the minimal template did not start")
            subprocess.run(
                [*runsc, "checkpoint", "-compression=none", "-exclude-committed-zero-pages",
                 "--image-path", str(self.minimal_image), cid],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        finally:
            proc.kill()
            proc.wait()
            self.ex._cleanup(None, cid, job_dir)

    def minimal_restored(self) -> float:
        cid = f"tako-floor-{secrets.token_hex(4)}"
        job_dir, bundle = self._bundle(cid, [HOST_PYTHON, "-I", "-S", "-c", MINIMAL_PID1])
        try:
            argv = [
                *self.ex._runsc_argv(None, "none"), "restore", "--image-path", str(self.minimal_image),
                "--bundle", str(bundle), cid,
            ]  # fmt: skip
            started = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, input=b"go\n", timeout=120)
            wall = time.perf_counter() - started
            if out.returncode != 0 or out.stdout != b"1\n":
                raise RuntimeError(f"runsc restore: rc={out.returncode} {out.stdout!r} {out.stderr[-300:]!r}")
            return wall
        finally:
            self.ex._cleanup(None, cid, job_dir, restored=True)

    def build_product(self) -> None:
        from tako_shim.backends.local.sandbox import snapshots

        assert self.ex.snapshots is not None
        if self.loop.run_until_complete(self.ex.snapshots.ensure(snapshots.shape_of(self._job()))) is None:
            raise RuntimeError("the product's template snapshot could not be built")

    def product_restored(self) -> float:
        """Wall time to the outcome (the server answers then); CPU includes the background teardown."""
        assert self.ex.snapshots is not None
        restored = self.ex.snapshots.stats["restored"]
        started = time.perf_counter()
        outcome = self.loop.run_until_complete(self.ex.run(self._job(), self.artifacts))
        wall = time.perf_counter() - started
        self.loop.run_until_complete(self.ex.drain())  # the background teardown belongs to the job
        if outcome.stdout != "1\n" or self.ex.snapshots.stats["restored"] != restored + 1:
            raise RuntimeError(f"the job did not run from its snapshot: {outcome}")
        return wall


def floor_suite(root: Path, quick: bool) -> dict[str, Any]:
    rounds = 8 if quick else 25
    floor = Floor(root)
    try:
        floor.build_product()
        floor.build_minimal()
        methods = {
            "cold_python": measured(floor.bare.once),
            "cold_true": measured(lambda: floor.bare.once(expect=b"", args=["/bin/true"])),
            "product_restored": measured(floor.product_restored),
            "minimal_restored": measured(floor.minimal_restored),
        }
        with subreaper():
            for method in methods.values():  # one unmeasured warm-up each (page cache, first cgroup)
                method()
            samples = interleaved(methods, rounds, 0.2)
    finally:
        floor.close()
    return report(samples, rounds)


def report(samples: dict[str, list[tuple[float, float]]], rounds: int) -> dict[str, Any]:
    wall = {name: summarize([w for w, _ in values]) for name, values in samples.items()}
    cpu = {name: sum(c for _, c in values) / len(values) for name, values in samples.items()}
    base = "cold_python"
    ratios = {f"{name}_cpu_over_{base}": ratio(cpu[name], cpu[base]) for name in samples if name != base}
    ratios |= {
        f"{name}_p50_over_{base}": ratio(wall[name]["p50_ms"], wall[base]["p50_ms"])
        for name in samples
        if name != base
    }
    rows = [[name, wall[name]["p50_ms"], wall[name]["p95_ms"], round(cpu[name], 4)] for name in samples]
    table = markdown_table(["one job, alone", "p50 ms", "p95 ms", "CPU-s per job"], rows)
    table += "\n\n" + markdown_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    return {
        "rounds": rounds,
        "stats": wall,
        "cpu_per_job_s": cpu,
        "ratios": ratios,
        "throughput_1_3x_needs_cpu_ratio_at_most": round(1 / 1.3, 3),
        "table": table,
    }
