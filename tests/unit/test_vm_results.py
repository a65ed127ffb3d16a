"""scripts/vm/results.py: how the fresh-VM harness (make test-vm) turns the guest's results into its
verdict. The VM run itself is a pre-release check (docs/sandbox.md); this is its pure part."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vm" / "results.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_results", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["vm_results"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


vm = _load()

ALL_PASS = (
    "#plan host job-42 pytest-sandbox\n"
    "host\tPASS\t1.0\tkernel=6.1\n"
    "job-42\tPASS\t30.5\t'42\\n'\n"
    "pytest-sandbox\tPASS\t600.0\t52 passed in 600s\n"
    "#done\n"
)

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" failures="1" errors="1">
<testcase classname="tests.sandbox.test_limits" name="test_memory_bomb_ends_as_oom">
  <failure message="AssertionError: Outcome(status='failed')&#10;assert 'failed' == 'oom'">trace</failure>
</testcase>
<testcase classname="tests.sandbox.test_limits" name="test_output_flood_is_truncated_with_flags"/>
<testcase classname="tests.sandbox.test_executor" name="test_cgroup_teardown">
  <error message="OSError: [Errno 2] No such file or directory: '/sys/fs/cgroup/memory/tako-vm'">x</error>
</testcase>
</testsuite></testsuites>
"""


def test_every_planned_step_passing_and_done_is_ok() -> None:
    results = vm.parse_results(ALL_PASS)
    assert results.plan == ["host", "job-42", "pytest-sandbox"]
    assert [(s.name, s.status, s.seconds) for s in results.steps] == [
        ("host", "PASS", 1.0),
        ("job-42", "PASS", 30.5),
        ("pytest-sandbox", "PASS", 600.0),
    ]
    assert results.ok
    assert vm.summarize(results, {})[-1] == "fresh-VM run PASSED: 3 of 3 steps passed"


@pytest.mark.parametrize("status", ["FAIL", "SKIP"])
def test_a_failed_or_skipped_step_fails_the_run(status: str) -> None:
    results = vm.parse_results(ALL_PASS.replace("job-42\tPASS", f"job-42\t{status}"))
    assert not results.ok
    assert vm.summarize(results, {})[-1] == "fresh-VM run FAILED: 2 of 3 steps passed"


def test_a_guest_that_died_midway_fails_and_names_the_steps_that_never_reported() -> None:
    text = "#plan host job-42 pytest-sandbox\nhost\tPASS\t1.0\tok\n"
    results = vm.parse_results(text)
    assert results.missing == ["job-42", "pytest-sandbox"] and not results.done and not results.ok
    lines = vm.summarize(results, {})
    assert any(line.startswith("FAIL  job-42") and "did not report" in line for line in lines)
    assert "the guest script did not reach its end (see serial.log)" in lines


def test_details_keep_their_tabs_out_of_the_field_split() -> None:
    results = vm.parse_results("#plan a\na\tFAIL\t2\texit 1: x\ty\n#done\n")
    assert results.steps[0].detail == "exit 1: x\ty"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("job-42 PASS 3", "line 2: expected STEP<TAB>STATUS<TAB>SECONDS"),
        ("job-42\tOK\t3", "line 2: status 'OK' is not one of PASS, FAIL, SKIP"),
        ("job-42\tPASS\tsoon", "line 2: seconds 'soon' is not a number"),
    ],
)
def test_malformed_lines_are_rejected_with_the_line_number(line: str, message: str) -> None:
    with pytest.raises(vm.ResultsError, match=message):
        vm.parse_results(f"#plan job-42\n{line}\n")


def test_junit_failures_and_errors_are_listed_by_test_id_with_the_first_message_line() -> None:
    assert vm.junit_failures(JUNIT) == [
        "tests.sandbox.test_limits::test_memory_bomb_ends_as_oom (failure): "
        "AssertionError: Outcome(status='failed')",
        "tests.sandbox.test_executor::test_cgroup_teardown (error): "
        "OSError: [Errno 2] No such file or directory: '/sys/fs/cgroup/memory/tako-vm'",
    ]


def test_the_command_line_exit_status_is_the_verdict(tmp_path: Path) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)

    missing = run()
    assert missing.returncode == 1 and "the guest wrote no" in missing.stdout

    (tmp_path / "results.tsv").write_text(ALL_PASS)
    assert run().returncode == 0

    (tmp_path / "junit-sandbox.xml").write_text(JUNIT)
    (tmp_path / "results.tsv").write_text(ALL_PASS.replace("pytest-sandbox\tPASS", "pytest-sandbox\tFAIL"))
    failed = run()
    assert failed.returncode == 1
    assert "junit-sandbox.xml: 2 failed" in failed.stdout
    assert "test_memory_bomb_ends_as_oom (failure)" in failed.stdout
