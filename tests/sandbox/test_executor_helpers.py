"""Executor pieces that need no runsc: artifact verification, output tail, job directory layout."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest

from tako_shim.backends.local.sandbox import executor as ex
from tako_shim.backends.local.sandbox import frames, job, runsc


def artifact(name: str, data: bytes, sha: str | None = None) -> dict[str, object]:
    return {
        "name": name,
        "size_bytes": len(data),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "content_type": "application/octet-stream",
        "data_b64": base64.b64encode(data).decode(),
    }


def test_artifacts_are_written_only_when_name_and_sha256_check_out(tmp_path: Path) -> None:
    envelope = {
        "artifacts": [
            artifact("good.txt", b"fine"),
            artifact("tampered.txt", b"evil", sha="0" * 64),
            artifact("../escape.txt", b"x"),
            artifact(".hidden", b"x"),
            artifact("", b"x"),
        ]
    }
    job.write_artifacts(envelope, tmp_path / "art")
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["good.txt"]
    assert (tmp_path / "art" / "good.txt").read_bytes() == b"fine"
    assert not (tmp_path / "escape.txt").exists()


def test_tail_buffer_keeps_the_end_where_the_frame_is() -> None:
    buf = frames.TailBuffer(10)
    for chunk in (b"a" * 15, b"b" * 7, b"0123456789"):
        buf.feed(chunk)
    assert buf.text() == "0123456789"
    assert len(buf.data) <= 20


def test_job_directory_is_read_only_for_the_sandbox(tmp_path: Path) -> None:
    executor = ex.LocalExecutor.__new__(ex.LocalExecutor)  # no runsc probe: only the file layout is tested
    executor._jobs_dir = tmp_path
    sandbox_job = job.SandboxJob("j/1 x", "print(1)", {"a": 1}, ["six"], 5, 30, environment={"K": "V"})
    job_dir, deps_dir = executor._prepare_job_dir(sandbox_job)
    assert job_dir.name.startswith("j-1-x-")
    assert (job_dir / "code" / "main.py").read_text() == "print(1)"
    assert json.loads((job_dir / "input" / "data.json").read_text()) == {"a": 1}
    config = json.loads((job_dir / "code" / "job.json").read_text())
    assert config["requirements"] == ["six"] and config["environment"] == {"K": "V"}
    assert config["embed_artifacts"] is True and config["egress_probe"] is True
    assert config["python"] == "/usr/bin/python3"
    for path in ("code/main.py", "code/job.json", "input/data.json"):
        assert stat.S_IMODE((job_dir / path).stat().st_mode) == 0o444
    assert deps_dir == job_dir / "deps" and deps_dir.stat().st_uid == 65534


def framed_with_mac(key: bytes, envelope: dict[str, object]) -> bytes:
    from tako_runner import runner

    text = runner.frame(envelope)
    return (text + runner.mac_line(key, text)).encode("ascii")


def test_authenticated_envelope_needs_the_key_and_the_exact_frame() -> None:
    key = b"a" * 64
    envelope = {"v": 1, "mode": "run", "exit_code": 0, "stdout": "hi\n"}
    good = framed_with_mac(key, envelope)
    assert frames.authenticated_envelope(b"user noise\n" + good, key) == envelope
    assert frames.authenticated_envelope(good, b"b" * 64) is None  # another key
    assert frames.authenticated_envelope(good, b"") is None  # no key: never early
    assert frames.authenticated_envelope(good[:-1], key) is None  # line not complete yet
    tampered = good.replace(b'"hi\\n"', b'"ho\\n"')
    assert frames.authenticated_envelope(tampered, key) is None
    assert frames.authenticated_envelope(good + b"after\n", key) is None  # the MAC line must be last
    bogus_length = good.replace(b"TAKO-ENVELOPE-MAC ", b"TAKO-ENVELOPE-MAC 9")
    assert frames.authenticated_envelope(bogus_length, key) is None


async def push(watch: job.FrameWatch, data: bytes) -> None:
    """One chunk of the sandbox's stdout through the watch's pump."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    await watch.pump(reader)


async def test_frame_watch_checks_a_bounded_number_of_candidates() -> None:
    key = b"c" * 64
    watch = job.FrameWatch(key, frames.TailBuffer(1 << 20))
    fake = b"\nTAKO-ENVELOPE-MAC 10 " + b"0" * 64 + b"\n"
    for _ in range(frames.MAX_MAC_CHECKS + 5):
        await push(watch, fake)
    assert watch.checks == frames.MAX_MAC_CHECKS and not watch.found.is_set()
    await push(watch, framed_with_mac(key, {"v": 1, "mode": "run"}))
    assert not watch.found.is_set()  # no more early checks...
    assert await watch.final_envelope() == {"v": 1, "mode": "run"}  # ...but the exit-time check finds it
    early = job.FrameWatch(key, frames.TailBuffer(1 << 20))
    await push(early, framed_with_mac(key, {"v": 1, "mode": "run"}))
    assert early.found.is_set() and early.envelope == {"v": 1, "mode": "run"}


def test_without_an_explicit_path_the_projects_own_runsc_comes_before_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The repository's .tools/bin/runsc (install-system.sh's build) wins over PATH and /usr/bin/runsc."""
    root = Path(__file__).resolve().parents[2]
    fake_tools = root / ".tools" / "bin" / "runsc"
    monkeypatch.delenv("TAKO_VM_RUNSC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    real_isfile = runsc.os.path.isfile
    monkeypatch.setattr(runsc.os.path, "isfile", lambda p: p == str(fake_tools) or real_isfile(p))
    monkeypatch.setattr(runsc.os, "access", lambda p, mode: p == str(fake_tools))
    assert runsc.find_runsc(None) == str(fake_tools)
