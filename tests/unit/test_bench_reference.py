"""bench/reference.py's pure parts, and bench/subreaper.py keeping an orphan's CPU in its tree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

from bench.proctree import tree_cpu  # noqa: E402
from bench.reference import compare, machine_busy_s, missing_setup, rows  # noqa: E402


def test_compare_gives_ours_over_reference_and_the_issue_targets() -> None:
    ours = {"cpu_per_job_s": 0.1, "jobs_per_s": 12.0, "lone_p50_ms": 20.0}
    reference = {"cpu_per_job_s": 0.25, "jobs_per_s": 5.0, "lone_p50_ms": 400.0}
    result = compare(ours, reference)
    assert result["ratios"] == {
        "cpu_per_job_ours_over_reference": 0.4,
        "jobs_per_s_ours_over_reference": 2.4,
        "lone_job_p50_ours_over_reference": 0.05,
    }
    assert result["targets"] == {"cpu_per_job_at_most_0_5x": True, "jobs_per_s_at_least_2x": True}
    worse = compare({**ours, "cpu_per_job_s": 0.2, "jobs_per_s": 9.0}, reference)
    assert worse["targets"] == {"cpu_per_job_at_most_0_5x": False, "jobs_per_s_at_least_2x": False}


def test_rows_and_machine_busy() -> None:
    measured = {
        "jobs_per_s": 5.466,
        "cpu_per_job_s": 0.2782,
        "machine_cpu_per_job_s": 0.3,
        "lone_p50_ms": 411.1,
        "lone_p95_ms": 647.1,
        "lone_n": 7,
        "jobs_in_window": 82,
        "jobs_all": 100,
    }
    expected = ["ref", "5.47", "0.278 (machine 0.300)", "411 (p95 647, n 7)", "82 / 100"]
    assert rows("ref", measured) == [expected]
    stat = "cpu  100 5 50 9000 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert machine_busy_s(stat, 100) == pytest.approx(1.6)


def test_missing_setup_names_a_reason_or_none() -> None:
    reason = missing_setup()
    assert reason is None or "make reference-setup" in reason or "root" in reason


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux")
def test_subreaper_keeps_a_daemonized_grandchild_cpu() -> None:
    # a subshell backgrounds a CPU-burning process and exits at once: without the subreaper the
    # burner would be reparented to init, and its CPU lost to a tree walk once it exits
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    script = f"({sys.executable} -c '{burn}' &); sleep 3"
    proc = subprocess.Popen([sys.executable, "-m", "bench.subreaper", "sh", "-c", script], cwd=REPO)
    last = 0.0
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        last = max(last, tree_cpu([proc.pid]))
        time.sleep(0.05)
    assert proc.wait(timeout=20) == 0
    assert last >= 0.25  # the orphan's 0.3 s of CPU were seen in the subreaper's tree


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux")
def test_adopting_orphans_counts_them_and_leaves_direct_children_to_subprocess() -> None:
    # in a process of its own: while adopting, every orphan that reaches the process is reaped
    script = r"""
import resource, subprocess, sys
sys.path.insert(0, sys.argv[1])
from bench.subreaper import adopting_orphans
burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
before = resource.getrusage(resource.RUSAGE_CHILDREN)
with adopting_orphans(direct_comm="sh"):
    done = subprocess.run(["sh", "-c", f"({sys.executable} -c '{burn}' &); exit 7"])
    import time; time.sleep(1.0)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
print(done.returncode, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(REPO)], capture_output=True, text=True, timeout=60, check=True
    )
    returncode, cpu = out.stdout.split()
    assert returncode == "7", "the direct child's status stayed with subprocess"
    assert float(cpu) >= 0.25, f"the orphan's CPU was not counted: {out.stdout}"
