"""Requirements: bad entries are rejected before anything runs; good ones install in a separate
sandbox that has network, and the user code that imports them still has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sandbox_support import Sandbox

from tako_shim.backends.local.sandbox.executor import LocalExecutor, validate_requirements

pytestmark = pytest.mark.sandbox

BAD_REQUIREMENTS = [
    "six; rm -rf /",
    "six && curl evil",
    "six | sh",
    "$(id)",
    "`id`",
    "six\nevil",
    "https://evil.example/pkg.whl",
    "pkg @ https://evil.example/pkg.whl",
    "git+https://github.com/x/y",
    "./local/path",
    "/abs/path/pkg.whl",
    "../pkg",
    "-e .",
    "-e",
    "--index-url=https://evil.example/simple",
    "--extra-index-url https://evil.example",
    "-i https://evil.example",
    "--target=/",
    "-r /etc/passwd",
    "six --no-deps",
    "six; python_version > '3'",
    "file:///etc/passwd",
    " six",
    "",
]


@pytest.mark.parametrize("entry", BAD_REQUIREMENTS)
def test_bad_requirement_is_rejected_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_requirements(["idna", entry])
    assert "requirements[1]" in str(info.value)
    assert repr(entry)[:30] in str(info.value) or "longer than" in str(info.value)


async def test_bad_requirement_never_starts_a_sandbox(executor: LocalExecutor, tmp_path: Path) -> None:
    from sandbox_support import make_job

    jobs_before = set((executor.work_dir / "jobs").iterdir())
    with pytest.raises(ValueError, match="requirements\\[0\\]"):
        await executor.run(make_job("print(1)", requirements=["--index-url=https://evil.example"]), tmp_path)
    assert set((executor.work_dir / "jobs").iterdir()) == jobs_before


def test_good_requirements_pass() -> None:
    validate_requirements(["six", "idna==3.7", "requests[socks]>=2.31,<3", "numpy~=1.26", "a.b-c_d!=1.0.*"])


@pytest.mark.slow
async def test_job_with_requirements_imports_them_and_has_no_network(sx: Sandbox) -> None:
    code = r"""
import json, socket, six
try:
    socket.create_connection(("1.1.1.1", 443), timeout=3)
    net = "OPEN"
except OSError as exc:
    net = type(exc).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    dns = "OPEN"
except OSError as exc:
    dns = type(exc).__name__
try:
    open("/deps/evil.py", "w").write("x")
    deps = "WRITABLE"
except OSError as exc:
    deps = exc.errno
print(json.dumps({"six": six.__version__, "path": six.__file__, "net": net, "dns": dns, "deps": deps}))
"""
    outcome = await sx.run(code, requirements=["six==1.16.0"], startup_timeout=120)
    assert outcome.status == "succeeded", outcome
    report = json.loads(outcome.stdout)
    assert report["six"] == "1.16.0" and report["path"] == "/deps/six.py"
    assert report["net"] != "OPEN" and report["dns"] != "OPEN"
    assert report["deps"] != "WRITABLE"
    assert outcome.timing["dep_install_ms"] > 0
    assert outcome.timing["startup_ms"] >= outcome.timing["dep_install_ms"]


@pytest.mark.slow
async def test_unknown_package_fails_as_dependency_error(sx: Sandbox) -> None:
    outcome = await sx.run("print('never runs')", requirements=["tako-no-such-package-xyz==0.0.1"])
    assert outcome.status == "failed", outcome
    assert outcome.error is not None
    assert outcome.error["type"] == "dependency_error" and outcome.error["phase"] == "startup"
    assert "never runs" not in outcome.stdout
    assert outcome.timing["phase_at_exit"] == "startup"


@pytest.mark.slow
async def test_install_past_startup_timeout_is_a_startup_timeout(sx: Sandbox) -> None:
    # numpy, not six: six installs in ~1.0 s from pip's cache, so a 1 s deadline raced it (a CI flake);
    # unpacking numpy's wheel alone takes several seconds in gVisor.
    outcome = await sx.run("print('never runs')", requirements=["numpy==1.26.4"], startup_timeout=1)
    assert outcome.status == "timeout", outcome
    assert outcome.error is not None
    assert outcome.error["type"] == "startup_timeout" and outcome.error["phase"] == "startup"
    assert "never runs" not in outcome.stdout
    await sx.assert_healthy()
