"""The CI tier check (tests/ci_tiers.py): with CI set, a skipped sandbox test fails the run.

Each case runs a real pytest session (pytester, in-process) in a scratch project whose conftest loads the
check the same way tests/conftest.py does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import ci_tiers

CONFTEST = "from ci_tiers import register\n\n\ndef pytest_configure(config):\n    register(config)\n"
pytest_plugins = ["pytester"]
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    sandbox: needs runsc\n"


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Callable[..., pytest.RunResult]:
    def run(files: dict[str, str], *, ci: str | None) -> pytest.RunResult:
        pytester.makeini(INI)
        pytester.makeconftest(CONFTEST)
        for name, text in files.items():
            (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
            (pytester.path / name).write_text(text)
        monkeypatch.delenv("CI", raising=False)
        if ci is not None:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "tests")

    return run


SKIPPED_SANDBOX = {
    "tests/integration/test_a.py": (
        "import pytest\n\n@pytest.mark.sandbox\ndef test_runs_code():\n    pytest.skip('runsc missing')\n\n"
        "def test_plain():\n    assert True\n"
    )
}


def test_a_skipped_sandbox_test_fails_the_run_in_ci(session: Callable[..., pytest.RunResult]) -> None:
    result = session(SKIPPED_SANDBOX, ci="true")
    assert result.ret == 1, result.stdout.str()
    assert "CI: the sandbox (real runsc/gVisor) tier was skipped" in result.stdout.str()
    assert "tests/integration/test_a.py::test_runs_code: runsc missing" in result.stdout.str()


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_the_same_skip_is_only_a_skip(
    session: Callable[..., pytest.RunResult], ci: str | None
) -> None:
    result = session(SKIPPED_SANDBOX, ci=ci)
    assert result.ret == 0, result.stdout.str()
    assert "1 passed, 1 skipped" in result.stdout.str()
    assert "tier was skipped" not in result.stdout.str()


def test_skips_outside_the_tier_and_sandbox_xfails_do_not_fail_ci(
    session: Callable[..., pytest.RunResult],
) -> None:
    files = {
        "tests/unit/test_b.py": (
            "import pytest\n\n@pytest.mark.sandbox\ndef test_ran():\n    assert True\n\n"
            "def test_no_kubectl():\n    pytest.skip('no kubectl binary on PATH')\n\n"
            "@pytest.mark.sandbox\n@pytest.mark.xfail(strict=True, reason='known bug')\n"
            "def test_known_bug():\n    assert False\n"
        )
    }
    result = session(files, ci="true")
    assert result.ret == 0, result.stdout.str()
    assert "1 passed, 1 skipped, 1 xfailed" in result.stdout.str()


def test_a_module_skipped_under_tests_sandbox_fails_ci(session: Callable[..., pytest.RunResult]) -> None:
    files = {
        "tests/sandbox/test_c.py": (
            "import pytest\n\npytest.skip('runsc cannot start', allow_module_level=True)\n\n"
            "def test_x():\n    pass\n"
        )
    }
    result = session(files, ci="1")
    assert result.ret == 1, result.stdout.str()
    assert "tests/sandbox/test_c.py: runsc cannot start" in result.stdout.str()


def test_a_failing_run_keeps_its_failure(session: Callable[..., pytest.RunResult]) -> None:
    files = dict(SKIPPED_SANDBOX)
    files["tests/integration/test_d.py"] = "def test_broken():\n    assert 1 == 2\n"
    result = session(files, ci="true")
    assert result.ret == 1
    assert "1 failed" in result.stdout.str() and "tier was skipped" in result.stdout.str()


def test_the_api_server_tier_counts_only_the_missing_server() -> None:
    tier = ci_tiers.Tier(
        "real API server",
        enforced=True,
        paths=("tests/unit/test_crd_apiserver.py",),
        reason="TAKO_APIEXTENSIONS",
    )
    node = "tests/unit/test_crd_apiserver.py::test_every_sample_is_accepted[x]"
    assert tier.covers(node, {}, "needs TAKO_APIEXTENSIONS_APISERVER=<path> and etcd on PATH")
    assert not tier.covers(node, {}, "core API objects are not served by apiextensions-apiserver")
    assert not tier.covers("tests/unit/test_crd_schema.py::test_x", {}, "needs TAKO_APIEXTENSIONS_APISERVER")


def test_the_api_server_tier_is_enforced_once_ci_builds_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ci_tiers, "ROOT", tmp_path)
    (tmp_path / "Makefile").write_text("test: setup lint\n\t$(PY)/pytest -q -ra\n")
    assert not ci_tiers.ci_builds("scripts/apiserver.sh")
    (tmp_path / "Makefile").write_text(
        "test: setup lint\n\tTAKO_APIEXTENSIONS_APISERVER=$$(bash scripts/apiserver.sh) $(PY)/pytest -q -ra\n"
    )
    assert ci_tiers.ci_builds("scripts/apiserver.sh")


def test_the_sandbox_tier_is_always_enforced() -> None:
    sandbox = [t for t in ci_tiers.REQUIRED_TIERS if "sandbox" in t.markers]
    assert len(sandbox) == 1 and sandbox[0].enforced and sandbox[0].reason == ""
