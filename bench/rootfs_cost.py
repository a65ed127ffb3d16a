"""Per-job effect of the sandboxes' own root filesystem (shim/tako_shim/backends/local/rootfs.py)
against binding the host's /usr, as every sandbox did before: ``LocalExecutor.run`` without a pool,
two executors interleaved in a random order per round,
for ``print(1)`` and for a job that imports a few stdlib modules.

    PATH=$PWD/.tools/bin:$PATH .venv/bin/python -m bench.rootfs_cost [ROUNDS]

The host-/usr stand-in is a directory whose ``usr``, ``bin``, ``lib``, ... are symlinks to the host's (runsc
binds what they point to), with a manifest naming the host python's bytecode format, so the runner is
precompiled for it as it was before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from bench.latency_parts import DirectExecutor, interleaved
from bench.stats import markdown_table, summarize

JOBS = {
    "print(1)": "print(1)",
    "stdlib imports": "import json, ssl, email.message, http.client, decimal\nprint(1)",
}
PROBE = (
    "import importlib.util, json, sys; print(json.dumps({'magic': importlib.util.MAGIC_NUMBER.hex(),"
    " 'cache_tag': sys.implementation.cache_tag}))"
)


def host_usr_stand_in(directory: Path) -> Path:
    directory.mkdir()
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.lexists(f"/{name}"):
            target = os.readlink(f"/{name}") if os.path.islink(f"/{name}") else f"/{name}"
            (directory / name).symlink_to(target)
    probe = ["/usr/bin/python3", "-I", "-S", "-c", PROBE]
    python = json.loads(subprocess.run(probe, capture_output=True, check=True).stdout)
    (directory / "tako-rootfs.json").write_text(json.dumps({"python": python}))
    directory.chmod(0o755)
    return directory


def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tako-rootfs-cost-"))
    executors = {
        "project root filesystem": DirectExecutor(work / "tree"),
        "host /usr (before)": DirectExecutor(work / "host", str(host_usr_stand_in(work / "host-usr"))),
    }
    try:
        methods = {
            f"{job} / {name}": partial(executor.once, code)
            for job, code in JOBS.items()
            for name, executor in executors.items()
        }
        samples = interleaved(methods, rounds)
        print(f"{rounds} rounds, load average {os.getloadavg()}")
        rows = []
        for label, values in samples.items():
            stats = summarize(values)
            rows.append([label, stats["n"], stats["p50_ms"], stats["p95_ms"], stats["min_ms"]])
        print(markdown_table(["LocalExecutor.run, no pool", "n", "p50 ms", "p95 ms", "min ms"], rows))
    finally:
        for executor in executors.values():
            executor.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
