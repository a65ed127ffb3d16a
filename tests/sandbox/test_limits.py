"""Resource attacks end as the contract says, within stated bounds, and the executor stays healthy."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sandbox_support import Sandbox, make_job

from tako_shim.backends.local.sandbox.executor import LocalExecutor

pytestmark = pytest.mark.sandbox

# Two stated bounds. The runner stops user code within timeout + the 2 s TERM->KILL grace (measured inside
# the sandbox as execution_ms, so machine load barely moves it). The whole job returns within
# timeout + 10 s: the outside watchdog (timeout + 2 s grace + 3 s egress allowance + 5 s margin) kills the
# sandbox if the runner has not ended it by then.
STOP_BOUND_S = 2.0 + 1.0
RESULT_BOUND_S = 10.0


async def test_memory_bomb_ends_as_oom(sx: Sandbox) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"
    outcome = await sx.run(code, memory_limit_mb=256)
    assert outcome.status == "oom", outcome
    assert outcome.error is not None and outcome.error["type"] == "oom"
    await sx.assert_healthy()


async def test_fork_bomb_is_contained_by_the_pids_limit(sx: Sandbox) -> None:
    code = r"""
import os, time
count = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        count += 1
except OSError as exc:
    print(count, exc.errno)
"""
    outcome = await sx.run(code, pids_limit=40)
    assert outcome.status == "succeeded", outcome
    forked, errno = (int(x) for x in outcome.stdout.split())
    assert errno == 11  # EAGAIN: RLIMIT_NPROC inside the sandbox
    assert 0 < forked < 40
    await sx.assert_healthy()


async def test_exponential_fork_bomb_ends_at_the_deadline(sx: Sandbox) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    outcome = await sx.run(code, timeout=3, pids_limit=50)
    elapsed = time.monotonic() - started
    assert outcome.status == "timeout", outcome
    assert elapsed < 3 + RESULT_BOUND_S, elapsed
    await sx.assert_healthy()


async def test_output_flood_is_truncated_with_flags(sx: Sandbox) -> None:
    code = (
        "import sys\n"
        "for _ in range(2000):\n"
        "    sys.stdout.write('é' * 5000 + '\\n')\n"
        "    sys.stderr.write('x' * 5000 + '\\n')\n"
    )
    outcome = await sx.run(code, max_stdout_bytes=4096, max_stderr_bytes=2048)
    assert outcome.status == "succeeded", outcome
    assert outcome.stdout_truncated and outcome.stderr_truncated
    assert outcome.stdout.endswith("[TRUNCATED: output exceeded 4096 bytes]")
    assert outcome.stderr.endswith("[TRUNCATED: output exceeded 2048 bytes]")
    body = outcome.stdout.split("\n\n[TRUNCATED")[0]
    assert len(body.encode()) <= 4096 and set(body) == {"é"}  # cut on a character boundary
    await sx.assert_healthy()


@pytest.mark.parametrize(
    "code", ["while True:\n    pass\n", "import time\ntime.sleep(10**6)\n"], ids=["busy-loop", "sleep"]
)
async def test_endless_code_ends_as_timeout_at_the_deadline(sx: Sandbox, code: str) -> None:
    started = time.monotonic()
    outcome = await sx.run(code, timeout=2)
    elapsed = time.monotonic() - started
    assert outcome.status == "timeout", outcome
    assert outcome.error == {
        "type": "execution_timeout",
        "message": "execution exceeded timeout=2s",
        "phase": "execution",
    }
    assert outcome.timing["phase_at_exit"] == "execution"
    assert 2 <= elapsed < 2 + RESULT_BOUND_S, elapsed
    assert 2000 <= outcome.timing["execution_ms"] < (2 + STOP_BOUND_S) * 1000, outcome.timing
    await sx.assert_healthy()


async def test_sigterm_ignoring_code_is_killed_after_the_grace(sx: Sandbox) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(10**6)\n"
    started = time.monotonic()
    outcome = await sx.run(code, timeout=2)
    assert outcome.status == "timeout", outcome
    assert time.monotonic() - started < 2 + RESULT_BOUND_S
    assert 4000 <= outcome.timing["execution_ms"] < (2 + STOP_BOUND_S) * 1000, (
        outcome.timing
    )  # KILL after grace


async def test_one_gigabyte_write_hits_the_size_cap(sx: Sandbox) -> None:
    code = r"""
import json, os
report = {}
for path in ["/output/big.bin", "/tmp/big.bin"]:
    written = 0
    try:
        with open(path, "wb") as handle:
            chunk = b"\0" * (1 << 20)
            for _ in range(1024):
                handle.write(chunk)
                written += len(chunk)
    except OSError as exc:
        report[path] = {"errno": exc.errno, "written": written}
    else:
        report[path] = {"errno": None, "written": written}
    if os.path.exists(path):
        os.remove(path)
print(json.dumps(report))
"""
    outcome = await sx.run(code, max_total_artifact_bytes=8 * 1024 * 1024)
    assert outcome.status == "succeeded", outcome
    report = json.loads(outcome.stdout)
    assert report["/output/big.bin"]["errno"] == 28  # ENOSPC: /output tmpfs = total artifact cap + 1 MiB
    assert report["/output/big.bin"]["written"] <= 9 * 1024 * 1024
    assert report["/tmp/big.bin"]["errno"] == 28  # /tmp tmpfs is 64 MiB
    assert report["/tmp/big.bin"]["written"] <= 64 * 1024 * 1024
    await sx.assert_healthy()


async def test_artifact_caps_skip_big_files(sx: Sandbox) -> None:
    code = (
        "open('/output/small.txt', 'w').write('s' * 100)\n"
        "open('/output/big.txt', 'w').write('b' * 5000)\n"
        "open('/output/.hidden', 'w').write('h')\n"
    )
    outcome = await sx.run(code, max_artifact_bytes=1000)
    assert outcome.status == "succeeded", outcome
    assert [a["name"] for a in outcome.artifacts] == ["small.txt"]
    assert (sx.artifacts / "small.txt").read_text() == "s" * 100
    assert not (sx.artifacts / "big.txt").exists()


def read_job_cgroups(executor: LocalExecutor, job_id: str) -> dict[str, str] | None:
    """The host cgroup settings of a running job's run sandbox, or None when it has none (yet / any more).

    The same view on both versions: v1 (and hybrid) reads memory.limit_in_bytes, cpu.cfs_quota_us and
    pids.max of the three controllers; v2 reads memory.max, the quota of cpu.max and pids.max."""
    cgroups = executor.cgroups
    assert cgroups is not None
    holder = cgroups.dirs("probe")[0].parent  # where the sandboxes' (memory) cgroups are created
    dirs = list(holder.glob(f"tako-{job_id}-run-*"))
    if not dirs:
        return None
    paths = cgroups.dirs(dirs[0].name)
    try:
        if cgroups.version == "v2":
            (path,) = paths
            return {
                "memory": (path / "memory.max").read_text().strip(),
                "cpu": (path / "cpu.max").read_text().split()[0],
                "pids": (path / "pids.max").read_text().strip(),
                "procs": (path / "cgroup.procs").read_text().strip(),
            }
        memory, pids, cpu = paths[:3]  # cgroups.CONTROLLERS order, then the other hierarchies
        return {
            "memory": (memory / "memory.limit_in_bytes").read_text().strip(),
            "cpu": (cpu / "cpu.cfs_quota_us").read_text().strip(),
            "pids": (pids / "pids.max").read_text().strip(),
            "procs": (memory / "cgroup.procs").read_text().strip(),
        }
    except OSError:
        return None


async def test_host_cgroup_limits_are_applied_while_the_job_runs(sx: Sandbox) -> None:
    code = "import time\ntime.sleep(3)\n"
    task = asyncio.create_task(
        sx.run(code, job_id="cgcheck", memory_limit_mb=300, cpu_limit=0.5, pids_limit=30)
    )
    found: dict[str, str] | None = None
    for _ in range(100):
        await asyncio.sleep(0.05)
        found = await asyncio.to_thread(read_job_cgroups, sx.executor, "cgcheck")
        if found and found["procs"]:
            break
    outcome = await task
    assert outcome.status == "succeeded", outcome
    assert found is not None
    # the job's memory_limit plus /output's own budget (a host tmpfs charged to this cgroup, artifacts.py)
    output_budget = make_job("").max_total_artifact_bytes + 1024 * 1024
    assert found["memory"] == str(300 * 1024 * 1024 + output_budget)
    assert found["cpu"] == "50000"  # 0.5 CPU per 100 ms period
    assert int(found["pids"]) >= 30
    assert found["procs"], "the sandbox's processes run inside the limited cgroup"
    await sx.executor.drain()  # the teardown runs in the background, after the result is out
    assert await asyncio.to_thread(read_job_cgroups, sx.executor, "cgcheck") is None  # removed afterwards
