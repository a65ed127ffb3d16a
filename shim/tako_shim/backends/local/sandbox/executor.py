"""The local executor: runs one job in its own gVisor (runsc) sandbox, or two when it has requirements.

Flow of ``LocalExecutor.run``:
1. write the job's code, input and runner config into a private job directory;
2. with requirements: an *install* sandbox (host network, /deps writable) runs ``runner.py install``;
3. a *run* sandbox (no network, /deps read-only) runs ``runner.py run``;
4. each sandbox prints one framed envelope; the deadline is also enforced from outside (``runsc kill``),
   OOM is read from the sandbox's memory cgroup (runsc 2024 exits 1 on an OOM kill, not 137);
5. ``tako_runner.outcome.classify`` turns envelopes + observations into an ``Outcome``; the artifacts
   the envelope lists (name, size, sha256) are copied as files from the run sandbox's /output, a host
   tmpfs, into ``artifact_dir`` and verified there, in a worker thread (``artifacts``).

This module is the orchestration only; the parts live beside it: ``runsc`` (process control),
``frames`` (the result frame and its MAC), ``artifacts`` (/output and how files leave it), ``job``
(a job's directory, config and sandbox watch), ``journal`` (the teardown journal), ``oci`` (the OCI
spec), ``cgroups`` and ``unsandboxed`` (the permissive fallback).

The result is returned as soon as the runner's *authenticated* frame is in (an HMAC with a key written
on the runner's stdin, see ``job.FrameWatch``), before the sandbox has exited: tearing a sandbox down
(runsc's own teardown, cgroups, the job directory) happens in the background, bounded by
``TEARDOWN_WAIT_S``, and is journalled in ``work_dir/teardown`` so that a restart finishes it.

``security_mode="strict"`` refuses to work without a runsc that actually starts a sandbox;
``"permissive"`` falls back to running the runner with the host Python (rlimits only, NO isolation)
with a loud warning, and records ``runtime="none"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import py_compile
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tako_shim.backends.local.rootfs as rootfs_module
from tako_runner import runner as runner_module
from tako_runner.outcome import Outcome, classify, parse_envelope
from tako_shim.backends.local import reqcache
from tako_shim.backends.local.sandbox import artifacts, cgroups, oci, runsc, snapshots
from tako_shim.backends.local.sandbox.frames import TailBuffer
from tako_shim.backends.local.sandbox.job import (
    EGRESS_PROBE_ALLOWANCE_S,
    EXTERNAL_DEADLINE_MARGIN_S,
    KILL_GRACE_S,
    TEARDOWN_WAIT_S,
    FrameWatch,
    SandboxJob,
    SandboxResult,
    hand_over,
    prepare_job_dir,
    runner_config,
    safe_id,
    stdout_limit,
    validate_requirements,
)
from tako_shim.backends.local.sandbox.job import watch as watch_sandbox
from tako_shim.backends.local.sandbox.journal import TeardownJournal
from tako_shim.backends.local.sandbox.unsandboxed import run_unsandboxed
from tako_vm.models.runner import RunnerConfig

log = logging.getLogger(__name__)

HOST_CA_BUNDLES = (  # Debian/Ubuntu/Arch, Fedora/RHEL, openSUSE
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
)
ROOTFS_HINT = (
    "build it with `make setup` (outside a checkout: `python -m tako_shim.backends.local.rootfs build`), "
    "or set rootfs_path (TAKO_VM_ROOTFS_PATH) to a root filesystem with /usr/bin/python3"
)
CGROUP_HINT = (
    "The local executor needs the memory, pids and cpu cgroup controllers (cgroup v1, v2 or hybrid; "
    "see docs/sandbox.md). To run without a sandbox (NOT safe for untrusted code) set "
    "security_mode: permissive."
)
INSTALL_MEMORY_FLOOR_MB = 1024


class SandboxUnavailable(Exception):
    """Strict mode and no working runsc; the message says how to install it."""


def _compile_runner(runner_dir: Path, sandbox_python: dict[str, Any]) -> str:
    """Precompile the runner for the sandbox's interpreter, so that no sandbox compiles it at start
    (about 10-40 ms of CPU for the main script, which Python never caches). Returns the file to run,
    relative to ``runner_dir``: the bytecode in ``__pycache__`` (which ``import runner`` in a warm
    sandbox also finds), or ``runner.py`` when it cannot be compiled for that interpreter.

    ``sandbox_python`` is the system root's manifest entry (``magic``, ``cache_tag``): the executor's
    own interpreter compiles it when its bytecode format is the same (any 3.11 for the bookworm root),
    never the host's /usr/bin/python3, which is not what sandboxes run."""
    ours = {"magic": importlib.util.MAGIC_NUMBER.hex(), "cache_tag": sys.implementation.cache_tag}
    if {key: sandbox_python.get(key) for key in ours} != ours:
        log.info(
            "runner not precompiled: the sandbox's python %s has another bytecode format than this one",
            sandbox_python.get("version", "(unknown)"),
        )
        return "runner.py"
    try:
        cfile = runner_dir / "__pycache__" / f"runner.{sys.implementation.cache_tag}.pyc"  # what imports find
        py_compile.compile(str(runner_dir / "runner.py"), cfile=str(cfile), doraise=True, optimize=0)
        compiled = cfile.resolve()
        relative = compiled.relative_to(runner_dir.resolve())
    except (OSError, ValueError, py_compile.PyCompileError) as exc:
        log.warning("could not precompile the runner (sandboxes will compile it at start): %s", exc)
        return "runner.py"
    compiled.parent.chmod(0o755)
    compiled.chmod(0o444)
    return str(relative)


def _install_ca_bundle(etc: Path, system_root: Path) -> None:
    """Copy a CA bundle to ``etc/ssl/certs/ca-certificates.crt`` (where Debian's pip and OpenSSL look).

    The install sandbox's network is the host's, so its trust is the host's too (a TLS-intercepting
    proxy's CA is in the host's bundle, as its resolver is in the host's resolv.conf, also copied); a
    host without a bundle at a usual place gets the system root's (Debian's ca-certificates)."""
    candidates = [Path(p) for p in HOST_CA_BUNDLES] + [system_root / rootfs_module.CA_BUNDLE]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        return
    certs = etc / "ssl" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    for directory in (etc / "ssl", certs):
        directory.chmod(0o755)
    shutil.copyfile(source, certs / "ca-certificates.crt")
    (certs / "ca-certificates.crt").chmod(0o644)


class LocalExecutor:
    def __init__(
        self,
        *,
        work_dir: Path,
        security_mode: str = "strict",
        runsc_path: str | None = None,
        rootfs_path: str | None = None,
        requirements_cache_mb: int = 0,
        requirements_cache_shared: bool = False,
        snapshot_dir: Path | None = None,
        snapshot_max_age_s: float = 86_400.0,
    ) -> None:
        """``rootfs_path``: the sandboxes' system root (default: this recipe's tree, see rootfs.py);
        ``requirements_cache_mb``: size of the installed-requirements cache (0: install per job);
        ``snapshot_dir``: where template snapshots live (None: no snapshots, every job starts cold)."""
        if security_mode not in ("strict", "permissive"):
            raise ValueError(f"security_mode must be 'strict' or 'permissive', got {security_mode!r}")
        self.work_dir = Path(work_dir).resolve()
        self.security_mode = security_mode
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._state_dir = self.work_dir / "runsc-state"
        self._jobs_dir = self.work_dir / "jobs"
        self._jobs_dir.mkdir(exist_ok=True)
        self._journal = TeardownJournal(self.work_dir / "teardown")  # sandboxes not yet torn down
        self._background: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self.system_root = Path(rootfs_path).absolute() if rootfs_path else rootfs_module.default_path()
        self._rootfs_problem = rootfs_module.problem(self.system_root)
        if self._rootfs_problem is not None and security_mode == "strict":
            raise SandboxUnavailable(
                f"sandbox root filesystem missing: {self._rootfs_problem}; {ROOTFS_HINT}"
            )
        self._system_dirs = rootfs_module.top_dirs(self.system_root) if self._rootfs_problem is None else {}
        self._hard_limits = runsc.host_hard_limits()
        self._prepare_shared_dirs()
        self.requirement_cache = reqcache.for_executor(
            self.work_dir, self.system_root, requirements_cache_mb, requirements_cache_shared
        )
        self.runsc = runsc.find_runsc(runsc_path)
        self.platform: str | None = None
        self.version: str | None = None
        self.cgroups: cgroups.Cgroups | None = None
        self.snapshots: snapshots.Snapshots | None = None
        self.rootfs_manifest = (
            rootfs_module.manifest(self.system_root) if self._rootfs_problem is None else {}
        )
        try:
            problem = self._probe_runsc()
        except cgroups.CgroupUnavailable as exc:
            if security_mode == "strict":
                raise SandboxUnavailable(f"no usable cgroup controller: {exc}. {CGROUP_HINT}") from None
            problem = str(exc)
        if problem is None:
            self.runtime = "runsc"
            self._reap_stale()
            if snapshot_dir is not None:
                self.snapshots = snapshots.Snapshots(self, Path(snapshot_dir), snapshot_max_age_s)
            return
        hint = runsc.ROOT_HINT if self.runsc is not None and os.geteuid() != 0 else runsc.INSTALL_HINT
        if security_mode == "strict":
            raise SandboxUnavailable(f"gVisor runsc is not usable: {problem}. {hint}")
        self.runtime = "none"
        log.warning(
            "!!! SECURITY WARNING: runsc is not usable (%s); security_mode=permissive runs jobs with the "
            "host Python and rlimits only: NO sandbox, NO network isolation. Never do this with untrusted "
            "code. %s",
            problem,
            hint,
        )

    # ------------------------------------------------------------------ setup and probing

    def _prepare_shared_dirs(self) -> None:
        rootfs = self.work_dir / "rootfs"
        rootfs.mkdir(exist_ok=True)
        for name, target in oci.rootfs_links(self._system_dirs).items():
            path = rootfs / name
            if target is not None:
                if not path.is_symlink():
                    path.symlink_to(target)
            else:
                path.mkdir(exist_ok=True)
        for mode in ("run", "install"):
            etc = self.work_dir / f"etc-{mode}"
            etc.mkdir(exist_ok=True)
            if mode == "install":  # pip's trust: the host's CA bundle (its proxies' CAs), else the tree's
                _install_ca_bundle(etc, self.system_root)
            resolv = None
            if mode == "install":
                with contextlib.suppress(OSError):
                    resolv = Path("/etc/resolv.conf").read_text()
            for name, content in oci.etc_files(with_resolv_conf=resolv).items():
                (etc / name).write_text(content)
        runner_dir = self.work_dir / "runner"
        runner_dir.mkdir(exist_ok=True)
        (runner_dir / "runner.py").unlink(missing_ok=True)  # our own 0444 copy: non-root cannot overwrite it
        shutil.copyfile(runner_module.__file__, runner_dir / "runner.py")
        for path in [rootfs, runner_dir, self.work_dir / "etc-run", self.work_dir / "etc-install"]:
            path.chmod(0o755)
        os.chmod(runner_dir / "runner.py", 0o444)
        python = rootfs_module.manifest(self.system_root).get("python")
        self._runner_entry = _compile_runner(runner_dir, python if isinstance(python, dict) else {})

    def _probe_runsc(self) -> str | None:
        """None when runsc starts a real sandbox (python3 prints the gVisor kernel), else the reason."""
        if self._rootfs_problem is not None:  # (strict mode refused it already)
            return f"{self._rootfs_problem} ({ROOTFS_HINT})"
        if self.runsc is None:
            return "no runsc binary found"
        self.version, problem = runsc.read_version(self.runsc)
        if problem is not None:
            return problem
        if os.geteuid() != 0:
            return "the local executor needs root to create sandboxes and cgroups (runsc rootful mode)"
        self.cgroups = cgroups.open_host()  # CgroupUnavailable names what is missing
        log.info("%s", self.cgroups.describe())
        errors = []
        for platform in runsc.PLATFORMS:
            problem = self._smoke_test(platform)
            if problem is None:
                self.platform = platform
                return None
            errors.append(f"{platform}: {problem}")
        return "runsc could not start a sandbox (" + "; ".join(errors) + ")"

    def _smoke_test(self, platform: str) -> str | None:
        job_dir = Path(tempfile.mkdtemp(prefix="probe-", dir=self._jobs_dir))
        cid = f"tako-probe-{secrets.token_hex(4)}"
        try:
            code_dir, input_dir = job_dir / "code", job_dir / "input"
            for d in (code_dir, input_dir):
                d.mkdir()
            (code_dir / "main.py").write_text("import os\nprint(os.uname().release)\n")
            (code_dir / "job.json").write_text(RunnerConfig(timeout=20, python=oci.SANDBOX_PYTHON).job_json())
            for p in (job_dir, code_dir, input_dir):
                p.chmod(0o755)
            try:
                bundle = self._write_bundle(
                    job_dir, "run", cid, None, SandboxJob("probe", "", {}, [], 20, 20), None
                )
            except OSError as exc:  # e.g. no permission to mount the /output tmpfs
                return str(exc)
            argv = [*self._runsc_argv(platform, "none"), "run", "--bundle", str(bundle), cid]
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return "timed out starting a sandbox"
            envelope = parse_envelope(proc.stdout.decode("utf-8", "replace"))
            if proc.returncode != 0 or not envelope or envelope.get("exit_code") != 0:
                detail = proc.stderr.decode("utf-8", "replace").strip()[-300:]
                return f"probe sandbox exited {proc.returncode}: {detail}"
            if envelope.get("stdout", "").strip() == os.uname().release:
                return "the probe ran on the host kernel, not in gVisor"
            return None
        finally:
            self._cleanup(platform, cid, job_dir)

    def _reap_stale(self) -> None:
        """Remove sandboxes, cgroups and job dirs a previous process with this work_dir left behind (a crash
        leaves the Sentry running, since `runsc run` is only its parent)."""
        stale = runsc.containers_with_state(self._state_dir)
        stale |= self._journal.pending()  # teardowns a crash interrupted
        for cid in sorted(stale):
            log.warning("removing stale sandbox %s left by a previous run", cid)
            self._cleanup(None, cid, None)
        artifacts.unmount_below(self._jobs_dir)  # /output tmpfs mounts of jobs the crash interrupted
        for leftover in self._jobs_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def runtime_info(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "version": self.version if self.runtime == "runsc" else None,
            "platform": self.platform if self.runtime == "runsc" else None,
            "runsc_path": self.runsc,
            "system_root": str(self.system_root),
            "security_mode": self.security_mode,
            "cgroup": self.cgroups.version if self.cgroups is not None else None,  # v1, hybrid or v2
        }

    # ------------------------------------------------------------------ bundles

    def _runsc_argv(self, platform: str | None, network: str) -> list[str]:
        assert self.runsc is not None
        return runsc.global_argv(self.runsc, self._state_dir, platform or self.platform or "ptrace", network)

    def _write_bundle(
        self, job_dir: Path, mode: str, cid: str, deps_dir: Path | None, job: SandboxJob, _unused: None
    ) -> Path:
        install = mode == "install"
        memory_mb = max(job.memory_limit_mb, INSTALL_MEMORY_FLOOR_MB) if install else job.memory_limit_mb
        output_dir, output_bytes = job_dir / "output", artifacts.output_bytes(job)
        if not install:  # /output's pages are charged to this cgroup: they get their own budget on top
            artifacts.mount_output(output_dir, output_bytes)
        assert self.cgroups is not None
        cgroup = self.cgroups.oci_path(cid)
        spec = oci.SandboxSpec(
            mode=mode,
            rootfs=str(self.work_dir / "rootfs"),
            etc_dir=str(self.work_dir / ("etc-install" if install else "etc-run")),
            runner_dir=str(self.work_dir / "runner"),
            code_dir=str(job_dir / "code"),
            input_dir=str(job_dir / "input"),
            deps_dir=str(deps_dir) if deps_dir else None,
            cgroup_path=cgroup,
            memory_limit_bytes=memory_mb * oci.MIB + (0 if install else output_bytes),
            pids_limit=job.pids_limit,
            cpu_limit=job.cpu_limit,
            tmp_size_bytes=(512 if install else 64) * oci.MIB,
            output_size_bytes=output_bytes,
            max_file_bytes=max(job.max_total_artifact_bytes, 64 * oci.MIB) + oci.MIB,
            host_hard_limits=self._hard_limits,
            system_root=str(self.system_root),
            system_dirs=tuple(name for name, target in self._system_dirs.items() if target is None),
            runner_entry=self._runner_entry,
            output_dir=None if install else str(output_dir),
        )
        bundle = job_dir / f"bundle-{mode}"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(oci.build_oci_spec(spec)))
        self._create_cgroups(cid, spec.memory_limit_bytes, job.pids_limit, job.cpu_limit)
        return bundle

    def _create_cgroups(self, cid: str, memory_bytes: int, pids_limit: int, cpu_limit: float) -> None:
        """Pre-create the sandbox's cgroups with their limits so that OOM counters survive the sandbox.

        The journal entry (``teardown/<cid>``) lists the cgroup directories: a restart removes exactly
        those, wherever this server's cgroup was (on v2 it can differ between runs)."""
        assert self.cgroups is not None
        dirs = self.cgroups.dirs(cid)
        self._journal.record(cid, dirs)  # forgotten by _cleanup once all is gone
        limits = cgroups.Limits(memory_bytes, oci.host_pids_limit(pids_limit), cpu_limit)
        self.cgroups.create(cid, limits)

    def _oom_killed(self, cid: str) -> bool:
        return self.cgroups is not None and self.cgroups.oom_killed(cid)

    def _cgroup_dirs(self, cid: str) -> list[Path]:
        """The cgroup directories journalled for a sandbox, then where this server would put them (every
        hierarchy's: a journal written by an older server may name only memory/pids/cpu)."""
        listed = self._journal.cgroup_dirs(cid) or []
        here = self.cgroups.dirs(cid) if self.cgroups is not None else []
        return listed + [d for d in here if d not in listed]

    def _cleanup(self, platform: str | None, cid: str, job_dir: Path | None, restored: bool = False) -> None:
        """Remove the container (only if runsc left state behind: `runsc run` cleans up after itself
        when the sandbox ends on its own), its cgroups and the job directory. ``restored``: an attached
        restore that has exited, whose state files are removed directly once its cgroups are empty."""
        if restored and snapshots.remove_restored(self._state_dir, cid, self._cgroup_dirs(cid)):
            pass
        elif self.runsc is not None and runsc.has_state(self._state_dir, cid):
            runsc.delete(self._runsc_argv(platform, "none"), cid)
        cgroups.remove_dirs(self._cgroup_dirs(cid))
        if job_dir is not None:
            artifacts.remove_job_dir(job_dir)
        self._journal.forget(cid)

    # ------------------------------------------------------------------ background teardown

    def _spawn_background(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait until every background teardown started on this event loop has finished."""
        loop = asyncio.get_running_loop()
        while pending := [t for t in self._background if t.get_loop() is loop and not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()

    async def _teardown(
        self,
        cid: str,
        proc: asyncio.subprocess.Process | None,
        readers: asyncio.Future[Any] | None,
        exit_wait_s: float = TEARDOWN_WAIT_S,
        restored: bool = False,
    ) -> None:
        """Bounded and guaranteed: let the sandbox exit (at most ``exit_wait_s``; 0 when its job did not
        finish), kill it if it does not, then remove its runsc state and cgroups. If the event loop goes
        away meanwhile, the removal still happens (synchronously); after a crash, the journal makes the
        next start do it."""
        try:
            if proc is not None and proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), exit_wait_s)
                except TimeoutError:
                    if exit_wait_s:
                        log.warning(
                            "sandbox %s did not exit %.0f s after its result; killing it", cid, exit_wait_s
                        )
                    await asyncio.to_thread(self._kill, cid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if readers is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(readers), 1.0)
            restored_exited = restored and proc is not None and proc.returncode is not None
            await asyncio.to_thread(self._cleanup, None, cid, None, restored_exited)
            if readers is not None:
                readers.cancel()  # a killed sandbox's processes may hold the pipes until removed
        except asyncio.CancelledError:
            self._cleanup(None, cid, None)
            raise

    async def _remove_job_dir(self, teardowns: list[asyncio.Task[None]], job_dir: Path) -> None:
        """Remove a job directory once the sandboxes that bind it are gone."""
        try:
            await asyncio.gather(*teardowns, return_exceptions=True)
            await asyncio.to_thread(artifacts.remove_job_dir, job_dir)
        except asyncio.CancelledError:
            artifacts.remove_job_dir(job_dir)
            raise

    # ------------------------------------------------------------------ running

    @staticmethod
    def runner_config(job: SandboxJob) -> RunnerConfig:
        return runner_config(job)

    def _prepare_job_dir(self, job: SandboxJob) -> tuple[Path, Path | None]:
        return prepare_job_dir(self._jobs_dir, job)

    async def run(self, job: SandboxJob, artifact_dir: Path, cancel: asyncio.Event | None = None) -> Outcome:
        validate_requirements(job.requirements)
        cancel = cancel or asyncio.Event()
        started = time.monotonic()
        if self.runtime != "runsc":
            outcome = await asyncio.to_thread(run_unsandboxed, job, artifact_dir, cancel)
        else:
            outcome = await self._run_sandboxed(job, artifact_dir, cancel)
        outcome.timing["total_ms"] = max(
            outcome.timing.get("total_ms", 0), int((time.monotonic() - started) * 1000)
        )
        return outcome

    async def _run_sandboxed(self, job: SandboxJob, artifact_dir: Path, cancel: asyncio.Event) -> Outcome:
        job_dir, deps_dir = await asyncio.to_thread(self._prepare_job_dir, job)
        teardowns: list[asyncio.Task[None]] = []
        lease: reqcache.Lease | None = None
        try:
            install: SandboxResult | None = None
            budget = job.startup_timeout + KILL_GRACE_S + EXTERNAL_DEADLINE_MARGIN_S
            if job.requirements and self.requirement_cache is not None:
                lease, installed = await reqcache.install_cached(
                    self.requirement_cache, job.tenant, job.requirements, teardowns, _install_failed,
                    lambda staged: self._sandbox(job, job_dir, staged, "install", budget, cancel, teardowns),
                )  # fmt: skip
                install = installed
                if lease is None:
                    assert install is not None
                    return self._classify(install, None)
                deps_dir = lease.deps  # the run sandbox binds the sealed entry read-only
            elif job.requirements:
                install = await self._sandbox(job, job_dir, deps_dir, "install", budget, cancel, teardowns)
                if _install_failed(install):
                    return self._classify(install, None)
            budget = job.timeout + KILL_GRACE_S + EGRESS_PROBE_ALLOWANCE_S + EXTERNAL_DEADLINE_MARGIN_S
            result = await self._restored(job, job_dir, lease, cancel, teardowns)
            if result is None:
                result = await self._sandbox(job, job_dir, deps_dir, "run", budget, cancel, teardowns)
            outcome = self._classify(install, result)
            await artifacts.store(outcome, result, job_dir / "output", artifact_dir, job)
            return outcome
        finally:
            self._spawn_background(self._remove_job_dir(teardowns, job_dir))
            if lease is not None and self.requirement_cache is not None:
                self._spawn_background(reqcache.release_after(self.requirement_cache, lease, teardowns))

    def snapshot_shape(self, job: SandboxJob, lease: reqcache.Lease | None) -> snapshots.Shape | None:
        """The template shape of ``job`` (None: no snapshot applies, e.g. requirements without a cache)."""
        if self.snapshots is None or (job.requirements and lease is None):
            return None
        deps = ""
        if lease is not None:
            try:
                digest = json.loads((lease.entry / reqcache.MARKER).read_text())["digest"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
            deps = f"{lease.deps}@{digest}"
        return snapshots.shape_of(job, deps)

    async def _restored(
        self,
        job: SandboxJob,
        job_dir: Path,
        lease: reqcache.Lease | None,
        cancel: asyncio.Event,
        teardowns: list[asyncio.Task[None]],
    ) -> SandboxResult | None:
        """Run ``job`` in a fresh restore of its template, or None: no image yet (one is built in the
        background) or the restore failed (a warning; the caller starts the job cold)."""
        shape = self.snapshot_shape(job, lease)
        found = self.snapshots.image(shape) if self.snapshots is not None and shape is not None else None
        if found is None or self.snapshots is None:
            return None
        key, image = found
        (job_dir / "code" / "job.json").unlink()
        (job_dir / "code" / "main.py").unlink()
        (job_dir / "input" / "data.json").unlink()
        hand_over(job, job_dir)
        cid = f"tako-{safe_id(job.job_id)[:32]}-snap-{secrets.token_hex(4)}"
        frame_key = secrets.token_hex(32).encode("ascii")
        proc: asyncio.subprocess.Process | None = None
        readers: asyncio.Future[Any] | None = None
        result: SandboxResult | None = None
        self.snapshots.used_sandboxes.append(cid)
        try:
            proc = await self.snapshots.start_restore(key, image, job_dir, cid, job)
            await self.snapshots.go(proc, frame_key, cid)
            self.snapshots.stats["restored"] += 1
            watch = FrameWatch(frame_key, TailBuffer(stdout_limit(job, "run")))
            watch.on_output = job.on_output
            budget = job.timeout + KILL_GRACE_S + EXTERNAL_DEADLINE_MARGIN_S
            result, readers = await self._watch(proc, cid, watch, TailBuffer(64 * 1024), budget, cancel)
            return result
        except (snapshots.RestoreFailed, OSError) as exc:
            log.warning("snapshot restore failed, running the job cold: %s", exc)
            if isinstance(exc, snapshots.RestoreFailed):
                self.snapshots.restore_failed(key)  # rebuilt after RETRY_AFTER_FAILURE_S
            else:
                self.snapshots.stats["fallbacks"] += 1
            return None
        finally:
            wait_s = TEARDOWN_WAIT_S if result is not None else 0.0
            teardown = self._teardown(cid, proc, readers, wait_s, restored=True)
            task = self._spawn_background(teardown)
            if result is not None:
                teardowns.append(task)
            else:  # the cold run reuses the job directory: /output free again, its own job.json
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.to_thread(artifacts.unmount, job_dir / "output")
                config = job_dir / "code" / "job.json"
                config.unlink()
                config.write_text(runner_config(job).job_json(), encoding="utf-8")
                config.chmod(0o444)

    def _classify(self, install: SandboxResult | None, run: SandboxResult | None) -> Outcome:
        last = run or install
        assert last is not None
        install_env = install.envelope if install else None
        if install is not None and install.exit_code != 0 and install_env and not install_env.get("error"):
            install_env = None  # an envelope only counts when the runner itself exited 0
        if run is not None and install_env is None:
            # The run sandbox started, so any startup work is done: a run sandbox that dies without an
            # envelope (outside deadline, killed runner) is in the execution phase.
            install_env = {"v": 1, "mode": "install", "error": None, "timing": {}}
        outcome = classify(
            install_env,
            run.envelope if run else None,
            exit_code=last.exit_code,
            oom_killed=last.oom_killed,
            deadline_exceeded=last.deadline_exceeded,
            cancelled=last.cancelled,
            runtime=self.runtime,
        )
        if outcome.error and outcome.error.get("type") == "internal_error" and last.stderr.strip():
            outcome.error["message"] += f": {last.stderr.strip()[-500:]}"
        return outcome

    async def _sandbox(
        self,
        job: SandboxJob,
        job_dir: Path,
        deps_dir: Path | None,
        mode: str,
        budget_s: float,
        cancel: asyncio.Event,
        teardowns: list[asyncio.Task[None]],
    ) -> SandboxResult:
        """Run one sandbox; return as soon as its runner's authenticated frame is in (or it ended).

        The sandbox's teardown is started in the background and appended to ``teardowns``."""
        cid = f"tako-{safe_id(job.job_id)[:32]}-{mode}-{secrets.token_hex(4)}"
        bundle = await asyncio.to_thread(self._write_bundle, job_dir, mode, cid, deps_dir, job, None)
        network = "host" if mode == "install" else "none"
        argv = [*self._runsc_argv(None, network), "run", "--bundle", str(bundle), cid]
        out_buf, err_buf = TailBuffer(stdout_limit(job, mode)), TailBuffer(64 * 1024)
        key = secrets.token_hex(32).encode("ascii")
        proc: asyncio.subprocess.Process | None = None
        readers: asyncio.Future[Any] | None = None
        result: SandboxResult | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(key + b"\n")  # the runner reads it before any user code exists
                await proc.stdin.drain()
            proc.stdin.close()
            # An install sandbox's result is only used once it has exited: the packages it wrote to
            # /deps are then surely on the host for the run sandbox (its teardown is ~0.1 s of an install).
            watch = FrameWatch(key, out_buf)
            watch.on_output = job.on_output if mode == "run" else None
            result, readers = await self._watch(proc, cid, watch, err_buf, budget_s, cancel, mode == "run")
            return result
        finally:
            wait_s = TEARDOWN_WAIT_S if result is not None else 0.0  # interrupted: kill at once
            teardowns.append(self._spawn_background(self._teardown(cid, proc, readers, wait_s)))

    async def _watch(
        self,
        proc: asyncio.subprocess.Process,
        cid: str,
        watch: FrameWatch,
        err_buf: TailBuffer,
        budget_s: float,
        cancel: asyncio.Event,
        early: bool = True,
    ) -> tuple[SandboxResult, asyncio.Future[Any]]:
        """``job.watch`` for sandbox ``cid`` of this executor (killed and checked for OOM by its id)."""
        return await watch_sandbox(
            proc, watch, err_buf, budget_s, cancel,
            kill=lambda: self._kill(cid), oom_killed=lambda: self._oom_killed(cid), early=early,
        )  # fmt: skip

    def _kill(self, cid: str) -> None:
        if self.runsc is None:
            return
        runsc.kill(self._runsc_argv(None, "none"), cid)


def _install_failed(install: SandboxResult | None) -> bool:
    return bool(
        install is None
        or install.cancelled
        or install.oom_killed
        or install.deadline_exceeded
        or not install.envelope
        or install.envelope.get("error")
        or install.exit_code != 0
    )
