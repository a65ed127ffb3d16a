"""The floor benchmark's accounting (bench/floor.py): its report, and that the orphans it promises to
count (runsc's gofer outlives ``runsc restore``) really reach the subreaper. Real runsc; the suite itself
runs with ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

from bench.floor import report  # noqa: E402

# In a child process of its own: the subreaper reaps *every* child, so nothing else may be one.
SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from bench.floor import Floor, cpu_now, reap_all, subreaper
floor = Floor(Path(sys.argv[1]))
try:
    floor.build_product()
    floor.build_minimal()
    result = {}
    with subreaper():
        for name in ("minimal_restored", "product_restored"):
            cpu0 = cpu_now()
            wall = getattr(floor, name)()
            result[name] = {"wall": wall, "reaped": reap_all(), "cpu": cpu_now() - cpu0}
finally:
    floor.close()
print(json.dumps(result))
"""


def test_report_gives_ratios_against_the_cold_python_run() -> None:
    samples = {
        "cold_python": [(0.100, 0.080), (0.200, 0.080)],
        "minimal_restored": [(0.090, 0.060), (0.110, 0.060)],
    }
    result = report(samples, rounds=2)
    assert result["cpu_per_job_s"] == {"cold_python": 0.08, "minimal_restored": 0.06}
    assert result["ratios"]["minimal_restored_cpu_over_cold_python"] == 0.75
    assert result["ratios"]["minimal_restored_p50_over_cold_python"] == round(100 / 150, 3)
    assert "cold_python_cpu_over_cold_python" not in result["ratios"]
    assert result["throughput_1_3x_needs_cpu_ratio_at_most"] == 0.769


def test_restores_leave_orphans_that_the_subreaper_counts(executor: object, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.splitlines()[-1])
    for name, measured in result.items():
        assert measured["reaped"] >= 1, f"{name}: no orphan reached the subreaper: {result}"
        assert measured["cpu"] > 0.01 and 0 < measured["wall"] < 60, result
