"""Artifacts leave a real runsc sandbox as files (issue #19 finding 8): /output is a host tmpfs bound into
the sandbox, the envelope lists name, size and sha256 under its MAC, and the host copies and verifies
each file in a worker thread (shim/tako_shim/backends/local/sandbox/artifacts.py)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import Sandbox, make_job

from tako_runner.outcome import Outcome
from tako_shim.backends.local.sandbox import artifacts
from tako_shim.backends.local.sandbox.executor import LocalExecutor
from tako_shim.backends.local.sandbox.job import SandboxResult
from tako_shim.backends.local.sandbox.warmpool import WarmPool

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
MIB = 1024 * 1024
TWO_FILES = "open('/output/a.txt', 'w').write('alpha')\nopen('/output/b.bin', 'wb').write(b'\\x01' * 3000)\n"


def mounts_under(path: Path) -> list[Path]:
    return artifacts.mounts_below(path.resolve(), Path("/proc/self/mountinfo").read_text())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_artifacts_are_listed_in_the_envelope_and_copied_as_files(
    sx: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    real_store = artifacts.store

    async def spy(outcome: Outcome, result: SandboxResult, *args: Any) -> None:
        seen.append(result.envelope or {})
        await real_store(outcome, result, *args)

    monkeypatch.setattr(artifacts, "store", spy)
    outcome = await sx.run(TWO_FILES)
    assert outcome.status == "succeeded", outcome
    assert [(a["name"], a["size_bytes"], a["sha256"]) for a in outcome.artifacts] == [
        ("a.txt", 5, sha(b"alpha")),
        ("b.bin", 3000, sha(b"\x01" * 3000)),
    ]
    assert (sx.artifacts / "a.txt").read_bytes() == b"alpha"
    assert (sx.artifacts / "b.bin").read_bytes() == b"\x01" * 3000
    (envelope,) = seen
    assert all(
        set(item) == {"name", "size_bytes", "sha256", "content_type"} for item in envelope["artifacts"]
    )


async def test_a_file_changed_after_the_envelope_is_refused(
    sx: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something rewrites /output after the runner hashed it (what a process that outlived the runner's
    kill would do): the host's copy does not match the MAC'd sha256, so it is not stored and the job fails."""
    real_ingest = artifacts.ingest

    def tamper_then_ingest(listed: list[Any], output_dir: Path, *args: Any) -> Any:
        (output_dir / "a.txt").write_bytes(b"ALPHA")  # same size, other bytes
        return real_ingest(listed, output_dir, *args)

    monkeypatch.setattr(artifacts, "ingest", tamper_then_ingest)
    outcome = await sx.run(TWO_FILES)
    assert outcome.status == "failed", outcome
    assert outcome.error is not None and outcome.error["type"] == "invalid_output"
    assert "'a.txt'" in outcome.error["message"] and "sha256 mismatch" in outcome.error["message"]
    assert [a["name"] for a in outcome.artifacts] == ["b.bin"]
    assert sorted(p.name for p in sx.artifacts.iterdir()) == ["b.bin"]


async def test_a_listed_file_replaced_by_a_symlink_to_a_host_path_is_not_followed(
    sx: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"alpha")  # even the listed content: only the link itself is refused
    real_ingest = artifacts.ingest

    def swap_then_ingest(listed: list[Any], output_dir: Path, *args: Any) -> Any:
        (output_dir / "a.txt").unlink()
        (output_dir / "a.txt").symlink_to(secret)
        return real_ingest(listed, output_dir, *args)

    monkeypatch.setattr(artifacts, "ingest", swap_then_ingest)
    outcome = await sx.run(TWO_FILES)
    assert outcome.status == "failed" and outcome.error is not None, outcome
    assert "a symlink" in outcome.error["message"]
    assert not (sx.artifacts / "a.txt").exists()


async def test_a_symlink_the_code_makes_in_output_to_a_host_path_is_not_an_artifact(
    sx: Sandbox, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host only")
    code = (
        f"import os\nos.symlink({str(secret)!r}, '/output/link')\nos.symlink('/etc/passwd', '/output/pw')\n"
    )
    outcome = await sx.run(code)
    assert outcome.status == "succeeded", outcome
    assert outcome.artifacts == []
    assert not sx.artifacts.exists() or list(sx.artifacts.iterdir()) == []


async def test_writing_past_the_total_cap_fails_with_an_error_naming_it(sx: Sandbox) -> None:
    code = "for i in range(3):\n    open(f'/output/a{i}.bin', 'wb').write(b'x' * (4 << 20))\n"
    outcome = await sx.run(code, max_total_artifact_bytes=8 * MIB)
    assert outcome.status == "failed", outcome
    assert outcome.error is not None and outcome.error["type"] == "invalid_output"
    assert f"max_total_artifact_bytes={8 * MIB}" in outcome.error["message"]
    assert [a["name"] for a in outcome.artifacts] == ["a0.bin", "a1.bin"]  # what fits is kept


async def test_output_has_its_own_budget_beside_the_jobs_memory_limit(sx: Sandbox) -> None:
    """50 MiB in /output and 70 MiB of the code's own memory in a 128 MiB job: /output's pages are
    charged to the job's cgroup, whose limit has /output's size on top of memory_limit."""
    code = (
        "import os\nfor i in range(5):\n    open(f'/output/a{i}.bin', 'wb').write(os.urandom(10 << 20))\n"
        "held = bytearray(70 << 20)\nfor i in range(0, len(held), 4096):\n    held[i] = 1\nprint('ok')\n"
    )
    outcome = await sx.run(code, memory_limit_mb=128, timeout=60)
    assert outcome.status == "succeeded", outcome
    assert len(outcome.artifacts) == 5 and sum(a["size_bytes"] for a in outcome.artifacts) == 50 * MIB


async def test_output_mounts_are_gone_after_the_job(sx: Sandbox) -> None:
    outcome = await sx.run(TWO_FILES)
    assert outcome.status == "succeeded", outcome
    await sx.executor.drain()
    assert mounts_under(sx.executor._jobs_dir) == []
    assert list(sx.executor._jobs_dir.iterdir()) == []


def test_a_restart_unmounts_and_removes_what_a_crash_left() -> None:
    work = Path(tempfile.mkdtemp(prefix="tako-artifacts-restart-"))
    try:
        left = work / "jobs" / "crashed-job-x"
        left.mkdir(parents=True)
        artifacts.mount_output(left / "output", MIB)
        (left / "output" / "a.bin").write_bytes(b"x" * 1000)
        assert mounts_under(work / "jobs") == [left / "output"]
        LocalExecutor(work_dir=work, security_mode="strict")  # its start-up reaps the leftovers
        assert mounts_under(work / "jobs") == []
        assert not left.exists()
    finally:
        for point in mounts_under(work):
            artifacts.unmount(point)
        shutil.rmtree(work, ignore_errors=True)


async def test_a_warm_sandbox_gets_a_fresh_output_and_its_artifacts_are_copied(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    pool = WarmPool(executor, 1)
    try:
        assert await pool.wait_ready(within_s=60), pool.stats
        code = "import os\nprint(os.listdir('/output'))\n" + TWO_FILES
        outcome = await pool.run(make_job(code), tmp_path / "artifacts")
        assert pool.stats["warm_runs"] == 1, pool.stats
    finally:
        await pool.close()
    assert outcome.status == "succeeded", outcome
    assert outcome.stdout == "[]\n"
    assert [a["name"] for a in outcome.artifacts] == ["a.txt", "b.bin"]
    assert (tmp_path / "artifacts" / "a.txt").read_bytes() == b"alpha"
    await executor.drain()
    assert mounts_under(executor._jobs_dir) == []
