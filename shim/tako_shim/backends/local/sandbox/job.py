"""One job's sandbox lifecycle, apart from runsc itself: what a job asks for (``SandboxJob``), its
private job directory and runner config, watching a started sandbox until the runner's authenticated
frame is in (or it ended, ran out of time or was cancelled), and what a sandbox reported
(``SandboxResult``). ``executor.LocalExecutor`` strings these together; the warm pool reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tako_runner import runner as runner_module
from tako_shim.backends.live import LiveLines
from tako_shim.backends.local.sandbox import oci, runsc
from tako_shim.backends.local.sandbox.frames import (
    MAX_MAC_CHECKS,
    TailBuffer,
    authenticated_envelope,
    ends_with_mac_line,
)
from tako_vm.models.runner import RunnerConfig

log = logging.getLogger(__name__)

EXTERNAL_DEADLINE_MARGIN_S = 5.0  # slack over the runner's own deadline + kill grace
EGRESS_PROBE_ALLOWANCE_S = 3.0
KILL_GRACE_S = 2.0
ENVELOPE_OVERHEAD_BYTES = 2 * 1024 * 1024
TEARDOWN_WAIT_S = 10.0  # a sandbox whose runner has reported gets this long to exit before it is killed


@dataclass(frozen=True)
class SandboxJob:
    job_id: str
    code: str
    input_data: dict[str, Any]
    requirements: list[str]
    timeout: int
    startup_timeout: int
    memory_limit_mb: int = 512
    cpu_limit: float = 1.0
    pids_limit: int = 100
    environment: dict[str, str] = field(default_factory=dict)
    max_stdout_bytes: int = 65536
    max_stderr_bytes: int = 65536
    max_artifact_bytes: int = 10 * 1024 * 1024
    max_total_artifact_bytes: int = 50 * 1024 * 1024
    max_artifact_count: int = 1000
    tenant: str = "default"  # scopes the requirement cache (backends/local/reqcache.py)
    # Modules a snapshot template imports before the job (None: the runner's own imports; snapshots.py).
    preload: tuple[str, ...] | None = None
    # Called with (stream, text) for the code's output as the runner forwards it (event streams).
    on_output: Callable[[str, str], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class SandboxResult:
    envelope: dict[str, Any] | None
    exit_code: int | None
    oom_killed: bool
    deadline_exceeded: bool
    cancelled: bool
    stderr: str


def validate_requirements(reqs: list[str]) -> None:
    """Reject anything but plain ``name[extras] op version`` specs; the ValueError names the entry."""
    runner_module.check_requirements(reqs)


def safe_id(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id) or "job"


def stdout_limit(job: SandboxJob, mode: str) -> int:
    """How much of a sandbox's stdout is kept: the runner's frame (capped streams, the artifact listing)
    ends it. Artifact bytes never travel in it (artifacts.py)."""
    return job.max_stdout_bytes * 2 + job.max_stderr_bytes * 2 + ENVELOPE_OVERHEAD_BYTES


def runner_config(job: SandboxJob) -> RunnerConfig:
    """The runner's job.json for a sandboxed run (the warm pool's is this one without the probe)."""
    return RunnerConfig(
        timeout=job.timeout,
        startup_timeout=job.startup_timeout,
        requirements=list(job.requirements),
        deps_dir="/deps",
        python=oci.SANDBOX_PYTHON,
        max_stdout_bytes=job.max_stdout_bytes,
        max_stderr_bytes=job.max_stderr_bytes,
        max_artifact_bytes=job.max_artifact_bytes,
        max_total_artifact_bytes=job.max_total_artifact_bytes,
        max_artifact_count=job.max_artifact_count,
        live_output=job.on_output is not None,
        environment=dict(job.environment),
        egress_probe=True,
        egress_probe_timeout=0,
        kill_grace_seconds=KILL_GRACE_S,
    )


def prestarted_config(job: SandboxJob) -> dict[str, Any]:
    """The runner config of a pre-started (warm or restored) sandbox: ``runner_config`` (a test keeps
    the two equal) without the egress probe, which the launcher ran once at boot in this very network
    namespace (fixed at sandbox creation, so the answer cannot change before ``go``)."""
    cold = runner_config(job)
    return cold.model_copy(update={"requirements": [], "egress_probe": False}).as_json_dict()


def hand_over(job: SandboxJob, job_dir: Path) -> None:
    """Write input, code and runner config (last) straight into a pre-started sandbox's bound, still
    unused directories (created 0444, never replacing a file).

    Inline on the event loop on purpose: three small creates cost less than a thread hop (profiling
    showed staging + rename + rmtree at ~19 ms per job on a loaded machine).
    """
    for path, text in (
        (job_dir / "input" / "data.json", json.dumps(job.input_data)),
        (job_dir / "code" / "main.py", job.code),
        (job_dir / "code" / "job.json", json.dumps(prestarted_config(job))),
    ):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)


def prepare_job_dir(jobs_dir: Path, job: SandboxJob) -> tuple[Path, Path | None]:
    """A private job directory: code/ (main.py, job.json) and input/ read-only, deps/ (owned by the
    sandbox user) when the job has requirements. Returns (job_dir, deps_dir or None)."""
    job_dir = Path(tempfile.mkdtemp(prefix=safe_id(job.job_id)[:40] + "-", dir=jobs_dir))
    code_dir, input_dir = job_dir / "code", job_dir / "input"
    code_dir.mkdir()
    input_dir.mkdir()
    (code_dir / "main.py").write_text(job.code, encoding="utf-8")
    (input_dir / "data.json").write_text(json.dumps(job.input_data), encoding="utf-8")
    deps_dir = None
    if job.requirements:
        deps_dir = job_dir / "deps"
        deps_dir.mkdir()
        os.chown(deps_dir, oci.SANDBOX_UID, oci.SANDBOX_GID)
    (code_dir / "job.json").write_text(runner_config(job).job_json(), encoding="utf-8")
    for path in (job_dir, code_dir, input_dir):
        path.chmod(0o755)
    for path in (code_dir / "main.py", code_dir / "job.json", input_dir / "data.json"):
        path.chmod(0o444)
    return job_dir, deps_dir


class FrameWatch:
    """Feeds a sandbox's stdout into its tail buffer and notices the runner's authenticated frame the
    moment it is complete (``found``), so the result does not wait for the sandbox to exit.

    User code can write to the runner's stdout (/proc/1/fd/1), so only ``MAX_MAC_CHECKS`` candidate
    lines are verified while the sandbox runs: a flood of fake MAC lines cannot make the event loop
    hash a large buffer per line. After that the frame is checked once more when the sandbox exits.
    """

    def __init__(self, key: bytes, buffer: TailBuffer) -> None:
        self.key = key
        self.buffer = buffer
        # Set by the caller for a run sandbox: gets the runner's TAKO-LIVE lines, parsed.
        self.on_output: Callable[[str, str], None] | None = None
        self.live = LiveLines()
        self.envelope: dict[str, Any] | None = None
        self.found = asyncio.Event()
        self.checks = 0
        self.candidate = False  # a MAC line ends the buffer: verify it (in a thread) before reading on

    def feed(self, chunk: bytes) -> None:
        self.buffer.feed(chunk)
        if self.on_output is not None and self.envelope is None:
            for stream, text in self.live.feed(chunk):
                self.on_output(stream, text)
        if self.envelope is not None or self.checks >= MAX_MAC_CHECKS or not chunk.endswith(b"\n"):
            return
        if not ends_with_mac_line(self.buffer):
            return
        self.checks += 1
        self.candidate = True

    async def pump(self, stream: asyncio.StreamReader) -> None:
        """Read the sandbox's stdout; a candidate frame (tens of MB with embedded artifacts) is
        hashed and parsed in a worker thread, never on the event loop."""
        while chunk := await stream.read(65536):
            self.feed(chunk)
            if self.candidate:
                self.candidate = False
                self.envelope = await asyncio.to_thread(
                    authenticated_envelope, bytes(self.buffer.data), self.key
                )
                if self.envelope is not None:
                    self.found.set()

    async def final_envelope(self) -> dict[str, Any] | None:
        """After the sandbox ended: the authenticated frame, if the runner printed one last."""
        if self.envelope is not None:
            return self.envelope
        return await asyncio.to_thread(authenticated_envelope, bytes(self.buffer.data), self.key)


async def watch(
    proc: asyncio.subprocess.Process,
    frames: FrameWatch,
    err_buf: TailBuffer,
    budget_s: float,
    cancel: asyncio.Event,
    *,
    kill: Callable[[], None],
    oom_killed: Callable[[], bool],
    early: bool = True,
) -> tuple[SandboxResult, asyncio.Future[Any]]:
    """Read a started sandbox until its runner's authenticated frame is in (final: the sandbox may
    still be exiting; only when ``early``), it ended, the budget ran out or the job was cancelled
    (then ``kill`` it, a blocking call run in a thread).

    Also returns the output readers, which the teardown awaits."""
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(frames.pump(proc.stdout), runsc.pump(proc.stderr, err_buf.feed))
    readers.add_done_callback(runsc.retrieve)  # may end in the background, after the result
    waiter = asyncio.ensure_future(proc.wait())
    cancel_wait = asyncio.ensure_future(cancel.wait())
    framed = asyncio.ensure_future(frames.found.wait() if early else asyncio.Event().wait())
    done, _ = await asyncio.wait(
        {waiter, cancel_wait, framed}, timeout=budget_s, return_when=asyncio.FIRST_COMPLETED
    )
    cancel_wait.cancel()
    framed.cancel()
    if early and frames.envelope is not None:
        # The runner prints its frame last, after killing everything else, and user code cannot
        # compute the MAC: the result is final even though the sandbox is still exiting.
        oom = oom_killed()  # one small cgroupfs read
        return SandboxResult(frames.envelope, 0, oom, False, False, err_buf.text()), readers
    deadline_exceeded = cancelled = False
    read_s = 10.0
    if waiter not in done:
        cancelled = cancel.is_set()
        deadline_exceeded = not cancelled
        await asyncio.to_thread(kill)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 10)
        except TimeoutError:
            proc.kill()
            await waiter
        # After a kill, the sandbox's own processes can hold the pipes open until it is removed
        # (the teardown does that); whatever the runner wrote is already in them.
        read_s = 1.0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(readers), read_s)
    exit_code = proc.returncode
    oom = oom_killed()
    envelope = await frames.final_envelope()
    if exit_code != 0 and envelope is not None and not oom:
        # The runner exits 0 right after printing its frame: a frame from a sandbox that ended
        # otherwise was not printed by a runner that finished (user code may have killed it).
        envelope = None
    return SandboxResult(envelope, exit_code, oom, deadline_exceeded, cancelled, err_buf.text()), readers
