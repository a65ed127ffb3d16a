"""How a job's artifacts leave its local sandbox: as files, never inside the result envelope.

- ``mount_output``: the run sandbox's ``/output`` is a host tmpfs mounted at ``<job_dir>/output`` before
  the sandbox starts, sized ``max_total_artifact_bytes + 1 MiB`` (``output_bytes``) and owned by the
  sandbox user, and bound read-write into the sandbox (``oci.SandboxSpec.output_dir``). A write past it
  fails with ENOSPC inside the sandbox, as with the tmpfs the sandbox used to have of its own; the runner
  then names ``max_total_artifact_bytes`` in the job's error. The Sentry writes those pages, so they are
  charged to the job's memory cgroup: the executor raises that cgroup's limit by ``output_bytes``, so
  /output does not eat into the job's ``memory_limit``.
- The runner lists each artifact in its envelope with name, size and sha256 only; the envelope's MAC
  (frames.py) covers that list, so the sandbox cannot change what the host expects.
- ``ingest`` (run in a worker thread, never on the event loop) copies each listed file into the job's
  artifact directory while hashing it and keeps it only when its size and sha256 are the listed ones.
  Files are opened relative to the output directory with ``O_NOFOLLOW | O_NONBLOCK`` and checked with
  ``fstat``: a name that is not a plain file name, a symlink (to a host path or anywhere), a FIFO or any
  other special file is refused and never followed or read.
- ``remove_job_dir`` unmounts ``/output`` before removing a job directory; ``unmount_below`` removes
  every mount a crashed server left under its jobs directory (the restart's reaping).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from tako_runner.outcome import Outcome
from tako_shim.backends.local.sandbox import oci
from tako_shim.backends.local.sandbox.job import SandboxJob, SandboxResult

log = logging.getLogger(__name__)

MS_NOSUID, MS_NODEV = 0x2, 0x4
MNT_DETACH = 0x2
COPY_CHUNK_BYTES = 1 << 20
MAX_NAME_BYTES = 255
SHA256_RE = re.compile(r"[0-9a-f]{64}")
OPEN_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
OPEN_TARGET = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def output_bytes(job: SandboxJob) -> int:
    """The size of a run sandbox's /output: the total artifact cap plus 1 MiB (result.json, slack)."""
    return job.max_total_artifact_bytes + oci.MIB


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def mount_output(path: Path, size_bytes: int) -> None:
    """Mount a tmpfs of ``size_bytes`` at ``path`` (created 0700 if missing), owned by the sandbox user.

    Raises OSError naming the path when the kernel refuses (the executor needs root, as runsc does)."""
    path.mkdir(mode=0o700, exist_ok=True)
    options = f"size={size_bytes},mode=0700,uid={oci.SANDBOX_UID},gid={oci.SANDBOX_GID}"
    target = os.fsencode(path)
    if _libc().mount(b"tako-output", target, b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot mount the sandbox's /output (a tmpfs) at {path}: {os.strerror(code)}")


def unmount(path: Path) -> None:
    """Detach every mount at ``path``; nothing mounted there (or no such path) is fine."""
    target = os.fsencode(path)
    for _ in range(8):  # a mount point can hold stacked mounts; ours holds one
        if _libc().umount2(target, MNT_DETACH) == 0:
            continue
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            log.warning("could not unmount %s: %s", path, os.strerror(code))
        return


def mounts_below(root: Path, mountinfo: str) -> list[Path]:
    """Mount points strictly below ``root`` in the text of /proc/self/mountinfo, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point.startswith(prefix):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: (-len(p.parts), str(p)))


def unmount_below(root: Path) -> None:
    """Unmount what a previous server left mounted under ``root`` (its jobs directory) after a crash."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return
    for point in mounts_below(root.resolve(), mountinfo):
        log.warning("unmounting %s left by a previous run", point)
        unmount(point)


def remove_job_dir(job_dir: Path) -> None:
    """Unmount the job's /output, then remove its directory."""
    unmount(job_dir / "output")
    shutil.rmtree(job_dir, ignore_errors=True)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an artifact's file name, or None (a plain, visible, printable file name)."""
    if not name or name in (".", "..") or name.startswith("."):
        return "an empty or hidden name"
    if "/" in name or "\\" in name or "\0" in name or not name.isprintable():
        return "not a plain, printable file name"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        return f"a name longer than {MAX_NAME_BYTES} bytes"
    return None


def _listed(item: Any) -> tuple[str, int, str, str] | None:
    """(name, size, sha256, content type) of an envelope entry, or None when it is malformed."""
    if not isinstance(item, dict):
        return None
    name, size, digest = item.get("name"), item.get("size_bytes"), item.get("sha256")
    if not isinstance(name, str) or type(size) is not int or size < 0:
        return None
    if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
        return None
    content_type = item.get("content_type")
    if not isinstance(content_type, str) or not content_type.isprintable() or len(content_type) > 255:
        content_type = "application/octet-stream"
    return name, size, digest, content_type


def _copy_verified(src_dir: int, dst_dir: int, name: str, size: int, digest: str) -> str | None:
    """Copy ``name`` from ``src_dir`` to ``dst_dir`` (directory fds) while hashing it; None when the copy
    is exactly ``size`` bytes with sha256 ``digest``, else why it was refused (nothing is left behind)."""
    try:
        src = os.open(name, OPEN_SOURCE, dir_fd=src_dir)
    except OSError as exc:
        reason = "a symlink" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror})"
        return f"{reason}, not a regular file"
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size != size:
            return f"its size changed after the runner listed it ({info.st_size} != {size} bytes)"
        try:
            dst = os.open(name, OPEN_TARGET, 0o644, dir_fd=dst_dir)
        except OSError as exc:
            return f"cannot be stored ({exc.strerror})"
        hasher, copied = hashlib.sha256(), 0
        try:
            while copied <= size:
                chunk = os.read(src, min(COPY_CHUNK_BYTES, size + 1 - copied))
                if not chunk:
                    break
                hasher.update(chunk)  # releases the GIL for chunks this large
                copied += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
        finally:
            os.close(dst)
        if copied != size or hasher.hexdigest() != digest:
            os.unlink(name, dir_fd=dst_dir)
            return "its content changed after the runner hashed it (sha256 mismatch)"
        return None
    finally:
        os.close(src)


def ingest(
    listed: list[Any], output_dir: Path, artifact_dir: Path, job: SandboxJob
) -> tuple[list[dict[str, Any]], list[str]]:
    """Copy the files the authenticated envelope lists from ``output_dir`` into ``artifact_dir``.

    Blocking (file I/O and hashing): call it in a worker thread. Returns the stored artifacts (the
    record's listing: name, size_bytes, sha256, content_type) and one message per refused entry. The
    job's caps are checked again here, so a listing can never make the host store more than they allow.
    """
    kept: list[dict[str, Any]] = []
    refused: list[str] = []
    if not listed:
        return kept, refused
    artifact_dir.mkdir(parents=True, exist_ok=True)
    src_dir = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst_dir = os.open(artifact_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            total, names = 0, set()
            for item in listed:
                entry = _listed(item)
                if entry is None:
                    refused.append(f"a malformed entry {str(item)[:80]!r}")
                    continue
                name, size, digest, content_type = entry
                problem = name_problem(name)
                if problem is None and name in names:
                    problem = "listed twice"
                elif problem is None and len(kept) >= job.max_artifact_count:
                    problem = f"over max_artifact_count={job.max_artifact_count}"
                elif problem is None and size > job.max_artifact_bytes:
                    problem = f"larger than max_artifact_bytes={job.max_artifact_bytes}"
                elif problem is None and total + size > job.max_total_artifact_bytes:
                    problem = f"over max_total_artifact_bytes={job.max_total_artifact_bytes}"
                if problem is None:
                    problem = _copy_verified(src_dir, dst_dir, name, size, digest)
                if problem is not None:
                    refused.append(f"{name[:80]!r}: {problem}")
                    continue
                names.add(name)
                total += size
                kept.append(
                    {"name": name, "size_bytes": size, "sha256": digest, "content_type": content_type}
                )
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)
    return kept, refused


async def store(
    outcome: Outcome, result: SandboxResult, output_dir: Path, artifact_dir: Path, job: SandboxJob
) -> None:
    """Store the artifacts of a run sandbox's authenticated envelope (in a worker thread) and make the
    outcome list exactly what was stored. A refused file fails a job that had succeeded: something
    changed /output after the runner, which had killed every other process, hashed it."""
    listed = (result.envelope or {}).get("artifacts") if not result.cancelled else None
    if not isinstance(listed, list) or not listed:
        outcome.artifacts = []
        return
    kept, refused = await asyncio.to_thread(ingest, listed, output_dir, artifact_dir, job)
    outcome.artifacts = kept
    if not refused:
        return
    log.warning("job %s: artifacts refused: %s", job.job_id, "; ".join(refused[:10]))
    if outcome.status == "succeeded":
        outcome.status = "failed"
        message = "artifact refused: " + "; ".join(refused[:5])
        outcome.error = {"type": "invalid_output", "message": message[:4096], "phase": "execution"}
        outcome.timing["phase_at_exit"] = "execution"
