"""Helpers for the sandbox tests (kept out of conftest so test modules can import them by a unique name)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tako_runner.outcome import Outcome
from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxJob, SandboxUnavailable

REPO = Path(__file__).resolve().parents[2]


def real_executor(prefix: str, *, snapshots: bool = False) -> Iterator[LocalExecutor]:
    """A strict LocalExecutor over real runsc in a fresh work dir (the test is skipped, with the reason,
    when runsc cannot start a sandbox here); ``snapshots``: with a template snapshot store beside it."""
    os.environ["PATH"] = f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        ex = LocalExecutor(
            work_dir=work / "work",
            security_mode="strict",
            snapshot_dir=work / "snapshots" if snapshots else None,
        )
    except SandboxUnavailable as exc:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"runsc cannot start a sandbox here: {exc}")
    yield ex
    shutil.rmtree(work, ignore_errors=True)


def make_job(code: str, **overrides: Any) -> SandboxJob:
    fields: dict[str, Any] = {
        "job_id": overrides.pop("job_id", "t"),
        "code": code,
        "input_data": overrides.pop("input_data", {}),
        "requirements": overrides.pop("requirements", []),
        "timeout": overrides.pop("timeout", 10),
        "startup_timeout": overrides.pop("startup_timeout", 60),
    }
    fields.update(overrides)
    return SandboxJob(**fields)


def cgroup_leftovers(ex: LocalExecutor, name: str) -> list[str]:
    """The directories of sandbox cgroups named ``name`` (a glob: one sandbox id, or ``tako-<job>-*``)
    still present in any hierarchy: globbed in each mount below /sys/fs/cgroup (v1, hybrid) and in the
    unified root itself (v2), independently of the code under test's own listing."""
    assert ex.cgroups is not None
    parent = ex.cgroups.oci_path("x").rsplit("/", 1)[0]
    return glob.glob(f"/sys/fs/cgroup{parent}/{name}") + glob.glob(f"/sys/fs/cgroup/*{parent}/{name}")


class Sandbox:
    """Runs snippets through the shared executor; artifacts land under the test's tmp_path."""

    def __init__(self, executor: LocalExecutor, tmp_path: Path) -> None:
        self.executor = executor
        self.artifacts = tmp_path / "artifacts"

    async def run(self, code: str, **overrides: Any) -> Outcome:
        return await self.executor.run(make_job(code, **overrides), self.artifacts)

    async def assert_healthy(self) -> None:
        """The executor still runs an ordinary job correctly after an attack."""
        outcome = await self.run("print('still healthy')", job_id="health")
        assert outcome.status == "succeeded", outcome
        assert outcome.stdout == "still healthy\n"
