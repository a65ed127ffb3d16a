"""Executor pieces that need no runsc: artifact verification, output tail, job directory layout."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from tako_shim.backends.local.sandbox import artifacts, frames, job, runsc
from tako_shim.backends.local.sandbox import executor as ex


def listing(name: str, data: bytes, sha: str | None = None) -> dict[str, object]:
    """One entry of the runner's artifact listing (what the envelope's MAC covers)."""
    return {
        "name": name,
        "size_bytes": len(data),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "content_type": "text/plain",
    }


def output_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    out = tmp_path / "output"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_artifacts_are_written_only_when_name_and_sha256_check_out(tmp_path: Path) -> None:
    out = output_with(tmp_path, {"good.txt": b"fine", "tampered.txt": b"evil", ".hidden": b"x", "x": b"x"})
    (tmp_path / "escape.txt").write_bytes(b"x")  # ../escape.txt from output/
    (out / "sub").mkdir()
    store = tmp_path / "store" / "art"
    (store / "sub").mkdir(parents=True)  # so that a name with a path could resolve outside the store
    listed = [
        listing("good.txt", b"fine"),
        listing("tampered.txt", b"evil", sha="0" * 64),
        listing("../escape.txt", b"x"),
        listing("sub/../../escape.txt", b"x"),
        listing(".hidden", b"x"),
        listing("", b"x"),
        listing("a\r\nb", b"x"),
        {"name": "x", "size_bytes": "1", "sha256": "0" * 64},  # malformed
    ]
    kept, refused = artifacts.ingest(listed, out, store, job.SandboxJob("j", "", {}, [], 5, 5))
    assert kept == [listing("good.txt", b"fine")]
    assert sorted(p.name for p in store.iterdir() if p.is_file()) == ["good.txt"]
    assert (store / "good.txt").read_bytes() == b"fine"
    assert not (tmp_path / "store" / "escape.txt").exists()  # never written outside the job's store
    assert len(refused) == 7 and any("sha256 mismatch" in r for r in refused), refused
    assert "'sub/../../escape.txt': not a plain, printable file name" in refused, refused


def test_a_file_changed_after_the_listing_is_refused_and_nothing_of_it_is_kept(tmp_path: Path) -> None:
    """Same size, other bytes: the copy is hashed as it is made, the partial copy removed."""
    out = output_with(tmp_path, {"a.bin": b"B" * 3_000_000, "b.bin": b"short"})
    listed = [listing("a.bin", b"A" * 3_000_000), listing("b.bin", b"longer")]
    kept, refused = artifacts.ingest(listed, out, tmp_path / "art", job.SandboxJob("j", "", {}, [], 5, 5))
    assert kept == [] and list((tmp_path / "art").iterdir()) == []
    assert "sha256 mismatch" in refused[0] and "size changed" in refused[1], refused


def test_symlinks_fifos_and_directories_in_output_are_never_followed_or_read(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host only")
    out = output_with(tmp_path, {})
    (out / "link").symlink_to(secret)
    os.mkfifo(out / "fifo")  # opening it must not block: O_NONBLOCK, then fstat refuses it
    (out / "dir").mkdir()
    listed = [listing("link", b"host only"), listing("fifo", b""), listing("dir", b"")]
    kept, refused = artifacts.ingest(listed, out, tmp_path / "art", job.SandboxJob("j", "", {}, [], 5, 5))
    assert kept == [] and list((tmp_path / "art").iterdir()) == []
    assert "a symlink" in refused[0] and all("not a regular file" in r for r in refused), refused


def test_the_hosts_copy_enforces_the_caps_again(tmp_path: Path) -> None:
    files = {f"f{i}": b"x" * 400 for i in range(4)}
    out = output_with(tmp_path, files)
    listed = [listing(name, data) for name, data in files.items()] + [listing("f0", b"x" * 400)]
    caps = job.SandboxJob("j", "", {}, [], 5, 5, max_artifact_bytes=300, max_total_artifact_bytes=1000)
    kept, refused = artifacts.ingest(listed, out, tmp_path / "a1", caps)
    assert kept == [] and all("max_artifact_bytes=300" in r for r in refused[:4]), refused
    caps = dataclasses.replace(caps, max_artifact_bytes=1000)
    kept, refused = artifacts.ingest(listed, out, tmp_path / "a2", caps)
    assert [a["name"] for a in kept] == ["f0", "f1"]
    assert "max_total_artifact_bytes=1000" in refused[0] and "listed twice" in refused[-1], refused
    caps = dataclasses.replace(caps, max_total_artifact_bytes=10_000, max_artifact_count=3)
    kept, refused = artifacts.ingest(listed, out, tmp_path / "a3", caps)
    assert len(kept) == 3 and "max_artifact_count=3" in refused[0], refused


def test_mounts_below_the_jobs_directory_are_found_deepest_first() -> None:
    mountinfo = (
        "22 1 0:21 / / rw - ext4 /dev/root rw\n"
        "90 22 0:50 / /w/jobs/a-1/output rw,nosuid - tmpfs tako-output rw,size=52428800\n"
        "91 90 0:51 / /w/jobs/a-1/output/x rw - tmpfs tmpfs rw\n"
        "92 22 0:52 / /w/jobs/with\\040space/output rw - tmpfs tako-output rw\n"
        "93 22 0:53 / /w/jobsother/output rw - tmpfs tmpfs rw\n"
    )
    assert artifacts.mounts_below(Path("/w/jobs"), mountinfo) == [
        Path("/w/jobs/a-1/output/x"),
        Path("/w/jobs/a-1/output"),
        Path("/w/jobs/with space/output"),
    ]


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
    assert "embed_artifacts" not in config and config["egress_probe"] is True  # artifacts leave as files
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
