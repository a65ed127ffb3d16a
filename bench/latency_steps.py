"""Where a cold job's time goes inside its sandbox: ``runsc run`` of the product's own bundle with
different processes, interleaved in a random order per round, timed from ``runsc run`` to the first
complete result on stdout (what the executor waits for) and to the exit of ``runsc run``.

    PATH=$PWD/.tools/bin:$PATH .venv/bin/python -m bench.latency_steps [ROUNDS] [OLD_RUNNER.py]

``OLD_RUNNER.py`` (optional, e.g. ``git show REV:runner/tako_runner/runner.py > /tmp/old.py``) adds a row
for another runner run the way the executor ran it then (``python3 -I runner.py``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.latency_parts import interleaved

PYTHON = "/usr/bin/python3"
RUN = ["run", "--config", "/code/job.json"]
NO_PROBE = ["run", "--config", "/code/noprobe.json"]
HEADER = "| process in the sandbox | to result p50 ms | min | to exit p50 ms | min |\n|---|---|---|---|---|"


def variants(runner_entry: str, old_runner: bool) -> dict[str, list[str]]:
    runner = [PYTHON, "-I", "-S", f"/runner/{runner_entry}"]
    rows = {
        "bare: python3 -u /code/main.py": [PYTHON, "-u", "/code/main.py"],
        "interpreter only: python3 -I -S -c 'print(1)'": [PYTHON, "-I", "-S", "-c", "print(1)"],
        "runner as the executor runs it (-I -S, bytecode)": [*runner, *RUN],
        "same, compiled from source": [PYTHON, "-I", "-S", "/runner/runner.py", *RUN],
        "same, without the egress probe": [*runner, *NO_PROBE],
    }
    if old_runner:
        rows["old runner (python3 -I, from source)"] = [PYTHON, "-I", "/runner/old_runner.py", *RUN]
    return rows


def main(rounds: int, old_runner: Path | None) -> None:
    from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxJob

    work = Path(tempfile.mkdtemp(prefix="tako-latency-steps-"))
    try:
        ex = LocalExecutor(work_dir=work, security_mode="strict")
        if old_runner is not None:
            shutil.copyfile(old_runner, work / "runner" / "old_runner.py")
        rows = variants(ex._runner_entry, old_runner is not None)
        job = SandboxJob("steps", "print(1)", {}, [], 10, 30)
        samples = interleaved({name: partial(once, ex, job, args) for name, args in rows.items()}, rounds)
        to_result = {name: [result_s * 1000 for result_s, _ in runs] for name, runs in samples.items()}
        to_exit = {name: [exit_s * 1000 for _, exit_s in runs] for name, runs in samples.items()}
        print(f"runsc {ex.version} ({ex.platform}), {rounds} rounds, load average {os.getloadavg()}")
        print(HEADER)
        for name in rows:
            cells = [statistics.median(to_result[name]), min(to_result[name])]
            cells += [statistics.median(to_exit[name]), min(to_exit[name])]
            print(f"| {name} | " + " | ".join(f"{value:.0f}" for value in cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def once(ex: object, job: object, args: list[str]) -> tuple[float, float]:
    """One ``runsc run``; seconds until the result is on stdout and until ``runsc run`` exited."""
    from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxJob

    assert isinstance(ex, LocalExecutor) and isinstance(job, SandboxJob)
    job_dir, _ = ex._prepare_job_dir(job)
    config = json.loads((job_dir / "code" / "job.json").read_text())
    (job_dir / "code" / "noprobe.json").write_text(json.dumps({**config, "egress_probe": False}))
    cid = f"tako-steps-{secrets.token_hex(4)}"
    try:
        bundle = ex._write_bundle(job_dir, "run", cid, None, job, None)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = args
        (bundle / "config.json").write_text(json.dumps(spec))
        argv = [*ex._runsc_argv(None, "none"), "run", "--bundle", str(bundle), cid]
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None
        output, result_at = b"", None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            output += chunk
            if result_at is None and (b"TAKO-ENVELOPE-END" in output or output == b"1\n"):
                result_at = time.perf_counter()
        _, stderr = proc.communicate()
        exit_at = time.perf_counter()
        if proc.returncode != 0 or result_at is None:
            raise RuntimeError(f"{args}: rc={proc.returncode} {output[-300:]!r} {stderr[-300:]!r}")
        return result_at - started, exit_at - started
    finally:
        ex._cleanup(None, cid, job_dir)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
