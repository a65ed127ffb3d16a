"""Smoke tests of the benchmark harness (bench/): the statistics, the report files, the seeding of
history, and one bare runsc / host python measurement. The suites themselves run with `make bench`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

import bench.__main__ as bench_main  # noqa: E402
from bench import harness  # noqa: E402
from bench.shim import seed_history  # noqa: E402
from bench.stats import markdown_table, percentile, ratio, summarize  # noqa: E402


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="pct"):
        percentile(values, 101)


def test_summary_is_in_milliseconds_and_ratio_refuses_a_zero_baseline() -> None:
    summary = summarize([0.1, 0.2, 0.3])
    assert summary["n"] == 3 and summary["p50_ms"] == 200.0 and summary["max_ms"] == 300.0
    assert ratio(115, 100) == 1.15
    with pytest.raises(ValueError, match="baseline"):
        ratio(1, 0)


def test_markdown_table_shape() -> None:
    table = markdown_table(["a", "b"], [[1, 2.5], ["x", 0.125]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2.5 |", "| x | 0.125 |"]


def test_main_writes_json_and_markdown_and_reports_a_failing_suite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, bool]] = []

    def fine(root: Path, quick: bool) -> dict[str, Any]:
        calls.append((root, quick))
        return {"table": "| x |\n|---|\n| 1 |", "ratios": {"r": 1.1}, "targets": {"t": True}}

    def broken(root: Path, quick: bool) -> dict[str, Any]:
        raise RuntimeError("suite exploded")

    monkeypatch.setattr(bench_main, "SUITES", {"fine": fine, "broken": broken})
    code = bench_main.main(["--quick", "--out", str(tmp_path)])
    assert code == 1
    assert calls and calls[0][1] is True
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["quick"] is True and report["machine"]["cpus"]
    assert report["suites"]["fine"]["ratios"] == {"r": 1.1}
    assert "suite exploded" in report["suites"]["broken"]["error"]
    markdown = (tmp_path / "latest.md").read_text()
    assert "## fine" in markdown and "FAILED: RuntimeError: suite exploded" in markdown
    assert bench_main.main(["--only", "fine", "--out", str(tmp_path)]) == 0


def test_seeded_history_is_what_the_server_reads(tmp_path: Path) -> None:
    from tako_shim.backends.local.store import JobStore

    seed_history(tmp_path, 50)
    store = JobStore(tmp_path / "tako_vm.sqlite3")
    store.open()
    try:
        rows = store.list_rows("default", status=None, job_type=None, limit=100, offset=0)
    finally:
        store.close()
    assert len(rows) == 50
    assert {r.status for r in rows} <= {"succeeded", "failed", "timeout"}
    assert all(r.outcome.get("runtime") == "runsc" for r in rows)


def test_host_python_baseline_runs() -> None:
    assert 0 < harness.host_python_once() < 30


@pytest.mark.sandbox
def test_bare_runsc_baseline_runs_the_same_code(tmp_path: Path) -> None:
    from tako_shim.backends.local.sandbox.executor import SandboxUnavailable

    harness.os.environ["PATH"] = harness.TOOLS_PATH
    try:
        bare = harness.BareRunsc(tmp_path / "bare")
    except SandboxUnavailable as exc:
        pytest.skip(f"runsc cannot start a sandbox here: {exc}")
    try:
        assert 0 < bare.once() < 60  # raises unless the sandbox printed exactly "1\n"
    finally:
        shutil.rmtree(tmp_path / "bare", ignore_errors=True)
