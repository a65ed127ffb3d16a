"""Reads what the fresh-VM run left in its results directory and prints the short summary that
scripts/test-in-fresh-vm.sh ends with; the exit status is 0 only when every planned step passed.

The guest (scripts/vm/guest-run.sh) writes results.tsv:
    #plan STEP STEP ...                      the steps it means to run, first
    STEP<TAB>PASS|FAIL|SKIP<TAB>SECONDS<TAB>DETAIL   one line per step, as it ends
    #done                                    last, when the script got to its end
plus JUnit XML files (junit-*.xml) from its pytest runs, whose failing tests are listed by name.
A planned step without a line (the guest died, hung or was killed by the host's timeout) is a failure,
and so is a SKIP: a skipped step proved nothing. Stdlib only: the host needs no venv to read results.

Usage: python3 scripts/vm/results.py RESULTS_DIR
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("PASS", "FAIL", "SKIP")


class ResultsError(ValueError):
    """results.tsv is not in the format guest-run.sh writes."""


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Results:
    plan: list[str]
    steps: list[Step]
    done: bool

    @property
    def missing(self) -> list[str]:
        reported = {step.name for step in self.steps}
        return [name for name in self.plan if name not in reported]

    @property
    def ok(self) -> bool:
        return self.done and not self.missing and all(step.status == "PASS" for step in self.steps)


def parse_results(text: str) -> Results:
    plan: list[str] = []
    steps: list[Step] = []
    done = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#plan"):
            plan = line.split()[1:]
            continue
        if line.strip() == "#done":
            done = True
            continue
        fields = line.split("\t", 3)
        if len(fields) < 3:
            raise ResultsError(
                f"results.tsv line {number}: expected STEP<TAB>STATUS<TAB>SECONDS[<TAB>DETAIL]"
            )
        name, status, seconds = fields[0], fields[1], fields[2]
        if status not in STATUSES:
            raise ResultsError(
                f"results.tsv line {number}: status {status!r} is not one of {', '.join(STATUSES)}"
            )
        try:
            elapsed = float(seconds)
        except ValueError:
            raise ResultsError(f"results.tsv line {number}: seconds {seconds!r} is not a number") from None
        steps.append(Step(name, status, elapsed, fields[3] if len(fields) > 3 else ""))
    return Results(plan, steps, done)


def junit_failures(xml_text: str) -> list[str]:
    """`test id: first line of the message` for every failed or errored test case of a JUnit report."""
    failures = []
    for case in ET.fromstring(xml_text).iter("testcase"):
        for kind in ("failure", "error"):
            problem = case.find(kind)
            if problem is None:
                continue
            test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failures.append(f"{test_id} ({kind}): {message[0][:300] if message else ''}")
    return failures


def summarize(results: Results, failures_by_report: dict[str, list[str]]) -> list[str]:
    lines = [
        f"{step.status:4}  {step.name:20} {step.seconds:8.1f}s  {step.detail[:200]}" for step in results.steps
    ]
    lines += [
        f"FAIL  {name:20}      -    did not report (the guest ended or was stopped before)"
        for name in results.missing
    ]
    for report, failures in sorted(failures_by_report.items()):
        if failures:
            lines.append(f"{report}: {len(failures)} failed")
            lines += [f"    {failure}" for failure in failures]
    if not results.done:
        lines.append("the guest script did not reach its end (see serial.log)")
    passed = sum(step.status == "PASS" for step in results.steps)
    verdict = "PASSED" if results.ok else "FAILED"
    lines.append(
        f"fresh-VM run {verdict}: {passed} of {len(results.plan) or len(results.steps)} steps passed"
    )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: results.py RESULTS_DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    tsv = directory / "results.tsv"
    if not tsv.is_file():
        print(f"fresh-VM run FAILED: the guest wrote no {tsv} (it did not boot or the test unit never ran)")
        return 1
    try:
        results = parse_results(tsv.read_text(encoding="utf-8", errors="replace"))
    except ResultsError as exc:
        print(f"fresh-VM run FAILED: {exc}")
        return 1
    reports = {}
    for junit in sorted(directory.glob("junit-*.xml")):
        try:
            reports[junit.name] = junit_failures(junit.read_text(encoding="utf-8", errors="replace"))
        except ET.ParseError as exc:
            reports[junit.name] = [f"unreadable JUnit report: {exc}"]
    print("\n".join(summarize(results, reports)))
    return 0 if results.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
