"""In CI, a skipped test of a required tier fails the run, so a green CI means the tier really ran.

``make test`` passes on a machine without runsc by skipping every sandbox test, saying why. That is
right on a laptop and wrong in CI: there a skip would turn "gVisor was exercised" into a silent no.
With ``CI`` set (GitHub Actions and most CI systems set ``CI=true``), the session ends with exit
status 1 and lists the skipped tests of each enforced tier in ``REQUIRED_TIERS``.

A tier is picked out by marker or path; ``reason`` (a regular expression) narrows it to the skips that
mean "the tier's infrastructure is missing", so a tier may still skip single cases on purpose.
Loaded by ``tests/conftest.py``; tested by ``tests/unit/test_ci_tiers.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tier:
    name: str
    enforced: bool
    markers: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    reason: str = ""  # a regex the skip reason must match to count; "" = every skip counts

    def covers(self, nodeid: str, keywords: Mapping[str, Any], reason: str) -> bool:
        picked = any(m in keywords for m in self.markers) or any(nodeid.startswith(p) for p in self.paths)
        return picked and re.search(self.reason, reason) is not None


def ci_builds(script: str) -> bool:
    """True once the CI command (``make test`` via .ci/run) runs ``script`` to set its tier up."""
    return any(script in (ROOT / f).read_text() for f in ("Makefile", ".ci/run") if (ROOT / f).exists())


REQUIRED_TIERS: tuple[Tier, ...] = (
    Tier("sandbox (real runsc/gVisor)", enforced=True, markers=("sandbox",), paths=("tests/sandbox/",)),
    # The real-API-server tier: enforced as soon as `make test` builds the server (scripts/apiserver.sh).
    Tier(
        "real API server",
        enforced=ci_builds("scripts/apiserver.sh"),
        paths=("tests/unit/test_crd_apiserver.py",),
        reason="TAKO_APIEXTENSIONS_APISERVER",
    ),
    # The console's browser tests: enforced once `make test` installs Chromium (scripts/install-browser.sh).
    Tier(
        "browser (headless Chromium)",
        enforced=ci_builds("scripts/install-browser.sh"),
        paths=("tests/integration/test_console_browser.py",),
        reason="chromium",
    ),
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class TierCheck:
    """Collects the skips of the enforced tiers and fails the session on them when in CI."""

    def __init__(self, tiers: tuple[Tier, ...]) -> None:
        self.tiers = [t for t in tiers if t.enforced]
        self.skipped: dict[str, list[str]] = {}

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        for tier in self.tiers:
            if tier.covers(report.nodeid, getattr(report, "keywords", {}), reason):
                self.skipped.setdefault(tier.name, []).append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for tier, lines in self.skipped.items():
            terminalreporter.section(f"CI: the {tier} tier was skipped", red=True)
            terminalreporter.line(f"{len(lines)} test(s) of a tier CI must run were skipped (CI is set):")
            for line in lines[:20]:
                terminalreporter.line(f"  {line}")


def register(config: pytest.Config) -> None:
    if in_ci():
        config.pluginmanager.register(TierCheck(REQUIRED_TIERS), "tako-ci-tiers")
