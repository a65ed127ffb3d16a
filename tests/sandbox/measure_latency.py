"""Measure print(1) through the local executor against a bare `runsc do python3 -c 'print(1)'`, and
against `runsc run` of the executor's own bundle shape with `python3 -c 'print(1)'` and no runner
(which isolates the runner's cost: a second interpreter start, the egress probe, the envelope).

Run: PATH=$PWD/.tools/bin:$PATH .venv/bin/python tests/sandbox/measure_latency.py [runs]
Alternates the two so machine load affects both alike; prints medians and the ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxJob


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tako-latency-") as tmp:
        executor = LocalExecutor(work_dir=Path(tmp) / "w")
        assert executor.runsc is not None and executor.platform is not None
        bare_argv = [
            executor.runsc, "--root", str(Path(tmp) / "bare-state"), f"--platform={executor.platform}",
            "--network=none", "do", "/usr/bin/python3", "-c", "print(1)",
        ]  # fmt: skip
        through, bare, bare_run = [], [], []
        job_dir = Path(tmp) / "w" / "jobs" / "bare"
        for sub in ("code", "input"):
            (job_dir / sub).mkdir(parents=True)
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
            cid = f"bare-{secrets.token_hex(4)}"
            bundle = executor._write_bundle(
                job_dir, "run", cid, None, SandboxJob("b", "", {}, [], 10, 30), None
            )
            spec = json.loads((bundle / "config.json").read_text())
            spec["process"]["args"] = ["/usr/bin/python3", "-c", "print(1)"]
            (bundle / "config.json").write_text(json.dumps(spec))
            argv = [*executor._runsc_argv(None, "none"), "run", "--bundle", str(bundle), cid]
            started = time.monotonic()
            proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=True)
            bare_run.append(time.monotonic() - started)
            assert proc.stdout == "1\n"
            executor._cleanup(None, cid, None)
    med_t, med_b = statistics.median(through), statistics.median(bare)
    print(f"runsc {executor.version} platform={executor.platform} runs={runs} load={os.getloadavg()[0]:.1f}")
    print(f"executor print(1): median {med_t * 1000:.0f} ms (min {min(through) * 1000:.0f})")
    print(f"bare runsc do    : median {med_b * 1000:.0f} ms (min {min(bare) * 1000:.0f})")
    med_r = statistics.median(bare_run)
    print(
        f"bare runsc run   : median {med_r * 1000:.0f} ms (min {min(bare_run) * 1000:.0f})"
        " (same bundle, no runner)"
    )
    print(f"ratio executor/bare runsc do: {med_t / med_b:.2f}; executor/bare runsc run: {med_t / med_r:.2f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
