"""The arithmetic of the load benchmarks (bench/analysis.py) and the report merging of
`python -m bench --only`, on synthetic data: no server, no sandbox, milliseconds."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench/ is a top-level directory, not an installed package

import bench.__main__ as bench_main  # noqa: E402
from bench.analysis import (  # noqa: E402
    closed_loop_window,
    cpu_per_job_ms,
    parse_proc_cpu,
    process_cpu,
    queue_burst,
    queue_growth,
    queue_table,
    throughput_table,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fifo_records(size: int, workers: int, service_s: float, *, lost: int = 0) -> list[dict[str, Any]]:
    """Records of ``size`` jobs created at T0 and served in order by ``workers`` at ``service_s`` each."""
    records = []
    for n in range(size):
        started = T0 + timedelta(seconds=(n // workers) * service_s)
        ended = started + timedelta(seconds=service_s)
        records.append(
            {
                "status": "failed" if n < lost else "succeeded",
                "created_at": T0.isoformat(),
                "started_at": started.isoformat(),
                "ended_at": ended.isoformat().replace("+00:00", "Z"),
            }
        )
    return records


def test_proc_stat_cpu_fields_survive_a_command_name_with_parentheses() -> None:
    fields = ["S"] + ["0"] * 10 + ["150", "50", "700", "300"] + ["0"] * 30
    text = "4242 (python3 (x) y) " + " ".join(fields)
    assert parse_proc_cpu(text, 100) == (2.0, 10.0)
    me = process_cpu(__import__("os").getpid())
    assert me is not None and me[0] > 0
    assert process_cpu(2**22 + 12345) is None  # no such pid


def test_cpu_per_job_splits_server_and_sandboxes() -> None:
    assert cpu_per_job_ms((1.0, 10.0), (2.0, 40.0), 100) == {
        "server_ms": 10.0,
        "sandboxes_ms": 300.0,
        "total_ms": 310.0,
    }
    assert cpu_per_job_ms(None, (1.0, 1.0), 10) is None
    assert cpu_per_job_ms((1.0, 1.0), (1.0, 1.0), 0) is None


def test_closed_loop_counts_only_the_window_and_checks_littles_law() -> None:
    # 4 clients, back-to-back round trips of 0.5 s from t=0 to t=20: X = 8 jobs/s, W = 0.5 s, L = 4.
    rounds = [(k * 0.5, (k + 1) * 0.5) for k in range(40) for _ in range(4)]
    result = closed_loop_window(rounds, 4, (5.0, 15.0))
    assert result["jobs"] == 80  # ends in (5, 15]: 5.5, 6.0, ..., 15.0 = 20 ends x 4 clients
    assert result["jobs_per_s"] == 8.0
    assert result["latency"]["p50_ms"] == 500.0
    assert result["littles_law"] == 1.0
    # Clients that idle between rounds (half the time) show up as Little's law ~0.5.
    idle = [(k * 1.0, k * 1.0 + 0.5) for k in range(40)]
    assert closed_loop_window(idle, 1, (5.2, 15.2))["littles_law"] == 0.5
    with pytest.raises(ValueError, match="window"):
        closed_loop_window(rounds, 4, (3.0, 3.0))
    assert "latency" not in closed_loop_window(rounds, 4, (100.0, 101.0))


def test_queue_burst_matches_the_fifo_model_and_counts_losses() -> None:
    burst = queue_burst(100, fifo_records(100, 4, 2.0), [0.05] * 100, {"server_ms": 15.0, "total_ms": 350.0})
    assert burst["finished"] == 100 and burst["lost"] == 0
    assert burst["jobs_per_s"] == 2.0  # 4 workers / 2 s
    assert burst["service"]["p50_ms"] == 2000.0
    assert burst["wait"]["max_ms"] == 48_000.0
    # The middle job waits for the half of the burst ahead of it: 50 / 2 jobs/s = 25 s, + 2 s service.
    assert burst["fifo_model_p50_ms"] == 27_000.0
    assert 0.9 < burst["end_to_end_over_fifo_model"] < 1.1
    partial = queue_burst(10, fifo_records(8, 2, 1.0, lost=1), [0.1] * 10)
    assert partial["finished"] == 7 and partial["lost"] == 3
    assert partial["statuses"] == ["failed", "succeeded"]
    assert queue_burst(5, [], [])["lost"] == 5


def test_queue_growth_separates_per_job_cost_from_queueing() -> None:
    cpu = {"server_ms": 15.0, "total_ms": 350.0}
    small = queue_burst(100, fifo_records(100, 4, 2.0), [0.05] * 100, cpu)
    big = queue_burst(1000, fifo_records(1000, 4, 2.0), [0.05] * 1000, cpu)
    verdict = queue_growth(small, big)
    growth, targets = verdict["growth"], verdict["targets"]
    assert growth["queue_ratio"] == 10.0
    assert growth["service_p50_ratio"] == 1.0 and growth["throughput_ratio"] == 1.0
    assert growth["server_cpu_per_job_ratio"] == 1.0
    assert 9.0 < growth["end_to_end_p50_ratio"] < 10.0  # linear wait + a constant service time
    assert targets == {"none_lost": True, "per_job_cost_flat": True, "end_to_end_p50_sub_linear": True}
    # A server whose service time grows with the queue fails the per-job target.
    slow = queue_burst(1000, fifo_records(1000, 4, 3.0), [0.05] * 1000, cpu)
    assert queue_growth(small, slow)["targets"]["per_job_cost_flat"] is False
    # So does one whose own CPU per job grows (O(Q) work somewhere on the host).
    costly = queue_burst(
        1000, fifo_records(1000, 4, 2.0), [0.05] * 1000, {"server_ms": 40.0, "total_ms": 375.0}
    )
    assert queue_growth(small, costly)["targets"]["per_job_cost_flat"] is False
    lossy = queue_burst(1000, fifo_records(990, 4, 2.0), [0.05] * 1000, cpu)
    assert queue_growth(small, lossy)["targets"]["none_lost"] is False


def test_only_keeps_the_other_suites_of_the_same_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def suite(value: int) -> Any:
        return lambda root, quick: {"table": f"| v |\n|---|\n| {value} |", "value": value}

    monkeypatch.setattr(bench_main, "SUITES", {"a": suite(1), "b": suite(2)})
    assert bench_main.main(["--out", str(tmp_path)]) == 0
    monkeypatch.setattr(bench_main, "SUITES", {"a": suite(10), "b": suite(20)})
    assert bench_main.main(["--only", "b", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latest.json").read_text())
    assert list(report["suites"]) == ["a", "b"]
    assert report["suites"]["a"]["value"] == 1 and report["suites"]["b"]["value"] == 20
    assert "started_at" in report["suites"]["b"] and isinstance(
        report["suites"]["b"]["loadavg_at_start"], list
    )
    markdown = (tmp_path / "latest.md").read_text()
    assert "## b (" in markdown and ", load [" in markdown
    # A quick run never mixes with full results; --fresh drops them.
    assert bench_main.main(["--quick", "--only", "b", "--out", str(tmp_path)]) == 0
    assert list(json.loads((tmp_path / "latest.json").read_text())["suites"]) == ["b"]
    assert bench_main.main(["--only", "b", "--fresh", "--out", str(tmp_path)]) == 0
    assert list(json.loads((tmp_path / "latest.json").read_text())["suites"]) == ["b"]
    (tmp_path / "latest.json").write_text("not json")
    assert bench_main.main(["--only", "a", "--out", str(tmp_path)]) == 0


def test_tables_print_both_bursts_side_by_side_with_the_ratio_row() -> None:
    cpu = {"server_ms": 15.0, "sandboxes_ms": 335.0, "total_ms": 350.0}
    small = queue_burst(100, fifo_records(100, 4, 2.0), [0.05] * 100, cpu)
    big = queue_burst(1000, fifo_records(1000, 4, 2.0), [0.04] * 1000, cpu)
    small["status_of_last_job"], big["status_of_last_job"] = {"p50_ms": 4.0}, {"p50_ms": 3.0}
    verdict = queue_growth(small, big)
    lines = queue_table(small, big, verdict["growth"]).splitlines()
    assert lines[0].startswith("| queued at once | finished / lost | submit p50 ms | in service p50 ms |")
    assert lines[2].startswith("| 100 | 100 / 0 | 50 | 2000 | 2 | 350 | 15 | 4 |")
    assert lines[3].startswith("| 1000 | 1000 / 0 | 40 | 2000 | 2 | 350 | 15 | 3 |")
    assert lines[4].startswith("| ratio (queue x10) |  | 0.8 | 1 | 1 | 1 | 1 | 0.75 | 9.")
    # A burst where nothing finished still prints, and fails its targets instead of crashing the suite.
    empty = queue_burst(1000, [], [0.04] * 1000)
    failed = queue_growth(small, empty)
    assert failed["targets"] == {
        "none_lost": False,
        "per_job_cost_flat": False,
        "end_to_end_p50_sub_linear": False,
    }
    assert "| 1000 | 0 / 1000 | 40 | - |" in queue_table(small, empty, failed["growth"])


def test_throughput_table_and_ratios_against_one_client() -> None:
    levels = {
        "1": {
            "jobs": 20,
            "jobs_per_s": 2.0,
            "latency": {"p50_ms": 500.0},
            "littles_law": 1.0,
            "cpu_per_job": None,
        },
        "4": {"jobs": 40, "jobs_per_s": 3.0, "latency": {"p50_ms": 1300.0}, "littles_law": 0.98},
    }
    table, ratios = throughput_table(levels)
    assert ratios == {"jobs_per_s_4_over_1": 1.5}
    assert table.splitlines()[2:] == [
        "| 1 | 20 | 2 | 1 | 500 | 1 | - |",
        "| 4 | 40 | 3 | 1.5 | 1300 | 0.98 | - |",
    ]


def test_recorded_results_are_what_the_analysis_code_computes() -> None:
    """bench/results/latest.json (whatever run it holds) agrees with the analysis code: its growth
    ratios and targets recompute from its bursts, and its throughput table re-renders identically."""
    report = json.loads((REPO / "bench" / "results" / "latest.json").read_text())
    queue_result, throughput_result = report["suites"].get("queue"), report["suites"].get("throughput")
    if queue_result and "bursts" in queue_result:
        small, big = (queue_result["bursts"][k] for k in sorted(queue_result["bursts"], key=int))
        again = queue_growth(small, big)
        assert again["targets"] == queue_result["targets"]
        assert {k: again["growth"][k] for k in queue_result["growth"]} == queue_result["growth"]
    if throughput_result and "levels" in throughput_result:
        assert throughput_table(throughput_result["levels"])[0] == throughput_result["table"]
