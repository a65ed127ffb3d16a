"""Measure print(1) through the local executor against a bare `runsc do python3 -c 'print(1)'`.

Run: PATH=$PWD/.tools/bin:$PATH .venv/bin/python tests/sandbox/measure_latency.py [runs]
Alternates the two so machine load affects both alike; prints medians and the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tako_shim.local.executor import LocalExecutor, SandboxJob


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tako-latency-") as tmp:
        executor = LocalExecutor(work_dir=Path(tmp) / "w")
        assert executor.runsc is not None and executor.platform is not None
        bare_argv = [
            executor.runsc, "--root", str(Path(tmp) / "bare-state"), f"--platform={executor.platform}",
            "--network=none", "do", "/usr/bin/python3", "-c", "print(1)",
        ]  # fmt: skip
        through, bare = [], []
        for n in range(runs):
            started = time.monotonic()
            outcome = await executor.run(SandboxJob(f"lat{n}", "print(1)", {}, [], 10, 30), Path(tmp) / "a")
            through.append(time.monotonic() - started)
            assert outcome.stdout == "1\n", outcome
            started = time.monotonic()
            proc = await asyncio.to_thread(
                subprocess.run, bare_argv, capture_output=True, text=True, check=True
            )
            bare.append(time.monotonic() - started)
            assert proc.stdout == "1\n"
    med_t, med_b = statistics.median(through), statistics.median(bare)
    print(f"runsc {executor.version} platform={executor.platform} runs={runs} load={os.getloadavg()[0]:.1f}")
    print(f"executor print(1): median {med_t * 1000:.0f} ms (min {min(through) * 1000:.0f})")
    print(f"bare runsc do    : median {med_b * 1000:.0f} ms (min {min(bare) * 1000:.0f})")
    print(f"ratio executor/bare: {med_t / med_b:.2f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
