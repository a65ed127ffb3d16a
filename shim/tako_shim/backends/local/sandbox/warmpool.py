"""A warm pool for the local backend: pre-started, single-use runsc sandboxes that wait for their job.

A cold job pays for a whole sandbox start (runsc create/boot, gofer, the runner's Python start-up)
before its first line runs. A warm sandbox has done all of that in advance and is blocked reading
its stdin; handing it a job is: move the job's files into its (already bound, read-only) job
directory, write ``go`` on its stdin, read the envelope. Each sandbox runs exactly one job and is then
destroyed; a background task keeps ``size`` sandboxes ready *while there is demand*: the pool is
empty until a job arrives and is emptied again ``idle_s`` after the last one (an idle sandbox costs
about 2.5% of a core; an idle server must burn next to nothing). Its refill task then waits on an
event with no timer: nothing polls.

Security argument (see docs/performance.md):
- the warm sandbox is the same OCI bundle a cold run uses (``LocalExecutor._write_bundle``): read-only
  root, ``--network=none``, uid 65534, no capabilities, memory/pids/cpu cgroup limits, tmpfs /tmp, and
  /output bound from a host tmpfs (artifacts.py). Only the process arguments differ: a small trusted
  launcher (``LAUNCHER``) that imports the runner, then blocks on stdin, then calls
  ``runner.main(["run", ...])`` in the same process (pid 1);
- /code and /input are host directories bound read-only *before* any job exists and are empty until
  the job is assigned; the host fills them, then sends ``go``. User code can never write them;
- no user code runs in a sandbox before ``go``, and a sandbox never sees a second job: after the run
  it is deleted (``runsc delete -force``, its cgroups and job directory removed);
- the egress probe runs once at boot (before ``READY``) instead of after ``go``: the sandbox's network
  namespace is fixed at creation, so the answer cannot change in between;
- jobs whose sandbox would differ (requirements, other memory/cpu/pids/artifact limits) bypass the
  pool and run cold, so every job still gets exactly the limits it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tako_runner.outcome import Outcome
from tako_shim.backends.local.sandbox import artifacts, snapshots
from tako_shim.backends.local.sandbox import job as job_module
from tako_shim.backends.local.sandbox.executor import LocalExecutor
from tako_shim.backends.local.sandbox.frames import TailBuffer
from tako_shim.backends.local.sandbox.job import FrameWatch, SandboxJob, SandboxResult
from tako_shim.config import Settings

log = logging.getLogger(__name__)

READY_MARKER = b"TAKO-WARM-READY"
GO_SIGNAL = b"go"  # + " <frame key>\n"
READY_TIMEOUT_S = 60.0
REFILL_BACKOFF_S = 2.0

# The user interpreter the launcher pre-starts: it blocks on a pipe from the launcher, then runs
# /code/main.py as ``python -u /code/main.py`` would (argv, sys.path[0], a fresh __main__, tracebacks
# without this bootstrap's frame, exit code 1 after an uncaught exception).
BOOTSTRAP = (
    r"""
import os, sys
fd = int(sys.argv[1])
go = os.read(fd, 2)
os.close(fd)
if go != b"go":
    os._exit(3)
"""
    + snapshots.RUN_MAIN
)

# The in-sandbox launcher: trusted, stdlib-only, run as ``python3 -I -S -c LAUNCHER`` (pid 1). Before
# READY it checks egress and pre-starts the user interpreter; after ``go <key>`` it runs the runner in
# this same process (``key`` authenticates its frame, as ``--frame-key-stdin`` does for a cold run),
# whose ``start_process`` of ``python -u /code/main.py`` is answered with the pre-started interpreter
# when argv, cwd and environment are exactly what it was started with (else a real spawn).
LAUNCHER = (
    snapshots.PRELUDE
    + r"""
BOOTSTRAP = sys.argv[1]
read_end, write_end = os.pipe()
os.set_inheritable(read_end, True)
child = runner.start_process(
    [config["python"], "-u", "-c", BOOTSTRAP, str(read_end)], env=expected_env, cwd=config["work_dir"]
)
os.close(read_end)
"""
    + snapshots.HANDOFF
    + r"""os.write(1, b"TAKO-WARM-READY\n")
line = os.read(0, 256)
while line and not line.endswith(b"\n") and len(line) < 256:
    more = os.read(0, 256 - len(line))
    if not more:
        break
    line += more
words = line.split()
if not line.endswith(b"\n") or not words or words[0] != b"go" or len(words) > 2:
    os._exit(3)
"""
    + snapshots.RUN_RUNNER
)


job_config = job_module.prestarted_config  # the runner config of a warm run


def pool_shape(job: SandboxJob) -> tuple[Any, ...]:
    """What a sandbox is built from (OCI bundle + cgroups, the preload set of a restored one); a job
    fits a warm sandbox of the same shape."""
    return (job.memory_limit_mb, job.pids_limit, job.cpu_limit, job.max_total_artifact_bytes, job.preload)


def fits(job: SandboxJob, template: SandboxJob) -> bool:
    """Jobs with requirements need an install sandbox first; other limits need another bundle."""
    return not job.requirements and pool_shape(job) == pool_shape(template)


@dataclass
class WarmSandbox:
    cid: str
    job_dir: Path
    process: asyncio.subprocess.Process
    ready_at: float
    restored: bool = False  # a restore of the template snapshot (snapshots.py), not a cold start


class WarmPool:
    """Wraps a ``LocalExecutor``: same ``run``/``runtime_info``, plus ``start``/``close``.

    ``template`` gives the limits warm sandboxes are built with (normally the server's defaults).
    """

    def __init__(
        self, executor: LocalExecutor, size: int, template: SandboxJob | None = None, idle_s: float = 60.0
    ) -> None:
        if size < 0:
            raise ValueError(f"warm_pool_size must be >= 0, got {size}")
        self.executor = executor
        self.size = size
        self.idle_s = idle_s
        self._demand_until = 0.0  # monotonic; the pool is kept full until then, empty after
        self.template = template or SandboxJob("warm", "", {}, [], 1, 10)
        self._ready: list[WarmSandbox] = []
        self._starting = 0
        self._wakeup = asyncio.Event()
        self._refill_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = dict.fromkeys(
            ("warm_runs", "cold_runs", "started", "start_failures", "drained", "restored_starts"), 0
        )
        self.used_sandboxes: deque[str] = deque(maxlen=1000)  # container ids, in the order jobs took them

    # ------------------------------------------------------------------ lifecycle

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.executor.runtime == "runsc"

    def runtime_info(self) -> dict[str, Any]:
        return {**self.executor.runtime_info(), "warm_pool_size": self.size if self.enabled else 0}

    async def start(self) -> None:
        if self.enabled and self._refill_task is None and not self._closed:
            self._refill_task = asyncio.create_task(self._refill_loop(), name="tako-warm-pool")

    async def close(self) -> None:
        self._closed = True
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task
            self._refill_task = None
        idle, self._ready = self._ready, []
        for sandbox in idle:
            await self._destroy(sandbox)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.executor.drain()

    def demand(self) -> None:
        """A job arrived (or a caller wants the pool filled): keep ``size`` sandboxes for ``idle_s``."""
        self._demand_until = time.monotonic() + self.idle_s
        self._wakeup.set()

    async def wait_ready(self, count: int | None = None, within_s: float = 30.0) -> bool:
        """Fill the pool and wait until ``count`` (default: ``size``) sandboxes are ready; for tests and
        benchmarks."""
        await self.start()
        self.demand()
        wanted = self.size if count is None else count
        deadline = time.monotonic() + within_s
        while len(self._ready) < wanted:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # ------------------------------------------------------------------ refilling

    async def _refill_loop(self) -> None:
        while not self._closed:
            left_s = self._demand_until - time.monotonic()
            if left_s <= 0 and self._ready:
                await self._drain()  # idle: no sandbox burns CPU while nothing is submitted
                continue
            if left_s <= 0 or len(self._ready) + self._starting >= self.size:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):  # no timer at all once drained
                    await asyncio.wait_for(self._wakeup.wait(), left_s if left_s > 0 else None)
                continue
            self._starting += 1
            try:
                sandbox = await self._start_one()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a start failure must not kill the pool: jobs just run cold
                self.stats["start_failures"] += 1
                log.warning("warm pool: starting a sandbox failed: %s", exc)
                await asyncio.sleep(REFILL_BACKOFF_S)
                continue
            finally:
                self._starting -= 1
            self.stats["started"] += 1
            self._ready.append(sandbox)

    async def _start_one(self) -> WarmSandbox:
        """A restore of the template snapshot when there is one (else a cold start)."""
        ex = self.executor
        shape = ex.snapshot_shape(self.template, None)
        found = ex.snapshots.image(shape) if ex.snapshots is not None and shape is not None else None
        if found is not None:
            try:
                sandbox = await self._restore_one(*found)
                self.stats["restored_starts"] += 1
                return sandbox
            except snapshots.RestoreFailed as exc:
                log.warning("warm pool: %s; starting a sandbox cold", exc)
                assert ex.snapshots is not None
                ex.snapshots.restore_failed(found[0])
        return await self._start_cold()

    async def _restore_one(self, key: str, image: Path) -> WarmSandbox:
        ex = self.executor
        assert ex.snapshots is not None
        cid = f"tako-warm-{secrets.token_hex(6)}"
        job_dir = await asyncio.to_thread(snapshots.empty_job_dir, ex._jobs_dir, "warm-")
        process: asyncio.subprocess.Process | None = None
        try:
            process = await ex.snapshots.start_restore(key, image, job_dir, cid, self.template)
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(b"ping\n")
            await process.stdin.drain()
            line = await snapshots.first_line(process, snapshots.RESTORE_TIMEOUT_S)
            if line.strip() != READY_MARKER:
                raise snapshots.RestoreFailed(f"restore {cid} did not answer: {line[:100]!r}")
            return WarmSandbox(cid, job_dir, process, time.monotonic(), restored=True)
        except BaseException:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await asyncio.shield(asyncio.to_thread(ex._cleanup, None, cid, job_dir))
            raise

    async def _start_cold(self) -> WarmSandbox:
        ex = self.executor
        cid = f"tako-warm-{secrets.token_hex(6)}"
        job_dir = await asyncio.to_thread(snapshots.empty_job_dir, ex._jobs_dir, "warm-")
        process: asyncio.subprocess.Process | None = None
        try:
            bundle = await asyncio.to_thread(ex._write_bundle, job_dir, "run", cid, None, self.template, None)
            config_path = bundle / "config.json"
            spec = json.loads(config_path.read_text())
            spec["process"]["args"] = ["/usr/bin/python3", "-I", "-S", "-c", LAUNCHER, BOOTSTRAP]
            config_path.write_text(json.dumps(spec))
            argv = [*ex._runsc_argv(None, "none"), "run", "--bundle", str(bundle), cid]
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            line = await snapshots.first_line(process, READY_TIMEOUT_S)
            if line.strip() != READY_MARKER:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                assert process.stderr is not None
                detail = (await process.stderr.read()).decode("utf-8", "replace").strip()[-300:]
                raise RuntimeError(f"warm sandbox {cid} did not become ready: {line!r} {detail}")
            return WarmSandbox(cid, job_dir, process, time.monotonic())
        except BaseException:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.shield(asyncio.to_thread(ex._cleanup, None, cid, job_dir))
            raise

    async def _drain(self) -> None:
        idle, self._ready = self._ready, []
        self.stats["drained"] += len(idle)
        log.info("warm pool: no job for %.0f s, removing %d idle sandboxes", self.idle_s, len(idle))
        await asyncio.gather(*(self._destroy(sandbox) for sandbox in idle), return_exceptions=True)

    async def _destroy(self, sandbox: WarmSandbox) -> None:
        with contextlib.suppress(ProcessLookupError):
            sandbox.process.kill()
        await sandbox.process.wait()
        await asyncio.to_thread(self.executor._cleanup, None, sandbox.cid, sandbox.job_dir)

    # ------------------------------------------------------------------ running

    def _take(self) -> WarmSandbox | None:
        while self._ready:
            sandbox = self._ready.pop(0)
            self._wakeup.set()
            if sandbox.process.returncode is None:
                return sandbox
            self._spawn_background(self._destroy(sandbox))  # died while waiting: discard
        return None

    async def run(self, job: SandboxJob, artifact_dir: Path, cancel: asyncio.Event | None = None) -> Outcome:
        """Run ``job`` in a ready warm sandbox when it fits one, else cold through the executor."""
        if self.enabled and not self._closed:
            await self.start()
            self.demand()
            if fits(job, self.template):
                sandbox = self._take()
                if sandbox is not None:
                    self.stats["warm_runs"] += 1
                    try:
                        return await self._run_warm(sandbox, job, artifact_dir, cancel or asyncio.Event())
                    except snapshots.RestoreFailed as exc:  # no user code ran: start the job cold
                        log.warning("warm pool: %s; running the job cold", exc)
                        self.stats["warm_runs"] -= 1
        self.stats["cold_runs"] += 1
        return await self.executor.run(job, artifact_dir, cancel)

    async def _run_warm(
        self, sandbox: WarmSandbox, job: SandboxJob, artifact_dir: Path, cancel: asyncio.Event
    ) -> Outcome:
        ex = self.executor
        job_module.validate_requirements(job.requirements)
        started = time.monotonic()
        self.used_sandboxes.append(sandbox.cid)
        process = sandbox.process
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        key = secrets.token_hex(32).encode("ascii")
        readers: asyncio.Future[Any] | None = None
        outcome: Outcome | None = None
        try:
            job_module.hand_over(job, sandbox.job_dir)  # a few small local writes: cheaper than a thread hop
            if sandbox.restored:
                assert ex.snapshots is not None
                await ex.snapshots.go(process, key, sandbox.cid)
            else:
                process.stdin.write(GO_SIGNAL + b" " + key + b"\n")
                await process.stdin.drain()
                process.stdin.close()
            result, readers = await self._wait(sandbox, job, cancel, key)
            outcome = ex._classify(None, result)
            await artifacts.store(outcome, result, sandbox.job_dir / "output", artifact_dir, job)
        finally:
            # The result is complete: let the used sandbox exit and delete it, off the critical path.
            wait_s = job_module.TEARDOWN_WAIT_S if outcome is not None else 0.0  # interrupted: kill now
            teardown = ex._spawn_background(
                ex._teardown(sandbox.cid, process, readers, wait_s, restored=sandbox.restored)
            )
            ex._spawn_background(ex._remove_job_dir([teardown], sandbox.job_dir))
        outcome.timing["total_ms"] = max(
            outcome.timing.get("total_ms", 0), int((time.monotonic() - started) * 1000)
        )
        return outcome

    async def _wait(
        self, sandbox: WarmSandbox, job: SandboxJob, cancel: asyncio.Event, key: bytes
    ) -> tuple[SandboxResult, asyncio.Future[Any]]:
        """The watchdog, caps and envelope rules of ``LocalExecutor._sandbox``, for a started sandbox:
        the result is final as soon as the runner's authenticated frame is in."""
        process = sandbox.process
        budget_s = job.timeout + job_module.KILL_GRACE_S + job_module.EXTERNAL_DEADLINE_MARGIN_S
        watch = FrameWatch(key, TailBuffer(job_module.stdout_limit(job, "run")))
        watch.on_output = job.on_output
        err_buf = TailBuffer(64 * 1024)
        return await self.executor._watch(process, sandbox.cid, watch, err_buf, budget_s, cancel)

    def _spawn_background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def warm_pool_for(executor: LocalExecutor, settings: Settings) -> WarmPool:
    """The server's pool: sandboxes shaped like a default job (512 MiB, 1 CPU, the artifact caps)."""
    template = SandboxJob(
        "warm",
        "",
        {},
        [],
        1,
        10,
        max_stdout_bytes=settings.max_stdout_bytes,
        max_stderr_bytes=settings.max_stderr_bytes,
        max_artifact_bytes=settings.max_artifact_bytes,
        max_total_artifact_bytes=settings.max_total_artifacts_bytes,
        max_artifact_count=settings.max_artifact_count,
    )
    return WarmPool(executor, settings.warm_pool_size, template, settings.warm_pool_idle_seconds)
