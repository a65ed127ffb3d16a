"""Latency pieces below the REST API: the local executor called directly (no HTTP, queue or SQLite), so the
latency table can split a job's overhead over a bare ``runsc run`` into sandbox path and server path."""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from bench.harness import CODE

T = TypeVar("T")


def interleaved(
    methods: Mapping[str, Callable[[], T]], rounds: int, pause_s: float = 0.0
) -> dict[str, list[T]]:
    """Each method once per round, in a new random order every round (a fixed seed), so that the
    machine's load changes affect every method alike; ``pause_s`` after each call."""
    samples: dict[str, list[T]] = {name: [] for name in methods}
    order = list(methods)
    rng = random.Random(7)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            samples[name].append(methods[name]())
            time.sleep(pause_s)
    return samples


class DirectExecutor:
    """``LocalExecutor.run`` of ``print(1)`` without a pool, on an event loop in its own thread (so the
    background teardown of one job proceeds while the benchmark sleeps between rounds, as in the server)."""

    def __init__(self, work_dir: Path, rootfs_path: str | None = None) -> None:
        from tako_shim.backends.local.sandbox.executor import LocalExecutor

        self.executor = LocalExecutor(work_dir=work_dir, security_mode="strict", rootfs_path=rootfs_path)
        self.artifacts = Path(tempfile.mkdtemp(prefix="direct-artifacts-", dir=work_dir))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="bench-direct-executor", daemon=True
        )
        self.thread.start()
        self.runs = 0

    def once(self, code: str = CODE) -> float:
        from tako_shim.backends.local.sandbox.executor import SandboxJob

        self.runs += 1
        job = SandboxJob(f"direct-{self.runs}", code, {}, [], 30, 60)
        started = time.perf_counter()
        outcome = asyncio.run_coroutine_threadsafe(self.executor.run(job, self.artifacts), self.loop).result()
        elapsed = time.perf_counter() - started
        if outcome.status != "succeeded" or outcome.stdout != "1\n":
            raise RuntimeError(f"direct executor job did not succeed: {outcome}")
        return elapsed

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.executor.close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
