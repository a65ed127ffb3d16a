"""Stateful sessions on the local backend: one gVisor sandbox per session, kept between calls.

Each session has a directory ``<work_dir>/sessions/<id>/`` holding ``meta.json`` (its state, rewritten
atomically on every change: what a restarted server reads back), ``in/`` and ``out/`` (the channel, see
``tako_runner/session.py``), ``bundle/`` (the OCI bundle), ``deps/`` (packages installed by a separate
install sandbox *with* egress, before the session sandbox, which has no network, starts) and, while
paused, ``image/`` (the ``runsc checkpoint`` image).

- Calls on one session run one at a time in arrival order (an ``asyncio.Lock``, which is FIFO).
- A call's timeout is enforced in the sandbox (SIGALRM -> ``KeyboardInterrupt``: state is kept); code
  that ignores the interrupt for ``session_interrupt_grace_seconds`` gets its sandbox killed and the
  session ends ``killed_after_timeout``. An OOM kill (read from the memory cgroup) ends it ``oom_killed``.
- A reaper task checks every ``REAP_INTERVAL_S``: TTL (``expired``), idle timeout (``idle``), and pauses
  (``runsc checkpoint``) sessions idle for ``session_pause_after_seconds``; the next call restores them.
- Sessions run in their own runsc state root (``session-state``), so the job executor's start-up
  reaper never touches them; a graceful close pauses live sessions, so they survive a restart; a crash
  ends them ``server_restarted`` at the next start (paused ones survive either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tako_runner import session as session_runner
from tako_shim.backends.events import Cursor, JobEvent
from tako_shim.backends.live import LiveOutput
from tako_shim.backends.local import session_live, sessions_spec
from tako_shim.backends.local.sandbox import cgroups
from tako_shim.backends.local.sandbox import oci as sandbox
from tako_shim.config import Settings, memory_limit_mb
from tako_shim.errors import Conflict, Gone, InvalidRequest, NotFound, RateLimited, Unavailable
from tako_shim.submission import JobResolver, canonical_json, sha256_hex
from tako_vm.models.sessions import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_TTL_SECONDS,
    CreateSessionRequest,
    SessionExecuteRequest,
    SessionExecution,
    SessionInfo,
    execution_id_for_key,
    session_gone_detail,
)

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 1.0
MIN_MEMORY_MB = 64
READY_TIMEOUT_S = 60.0
REPLY_POLL_S = 0.002
LIVE_POLL_S = 0.05  # how often a running call's live output file is read (a line shows within 0.5 s)
MAX_KEYS_KEPT = 200  # idempotent execute replies remembered per session
IDEMPOTENCY_CONFLICT = "Idempotency key reused with different payload"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.isoformat()


@dataclasses.dataclass
class SessionState:
    """What a session is, as written to its ``meta.json``."""

    session_id: str
    tenant: str
    status: str  # starting | ready | busy | paused | ended
    job_type: str
    requirements: list[str]
    created_at: str
    expires_at: str
    ttl_seconds: int
    idle_timeout_seconds: int
    memory_limit_mb: int
    cpu_limit: float
    last_activity: str
    executions: int = 0
    next_number: int = 1
    end_reason: str | None = None
    ended_at: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    replies: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # key -> fingerprint+reply

    def info(self, runtime: str | None) -> SessionInfo:
        shown = "ready" if self.status == "busy" else self.status
        assert shown in ("starting", "ready", "paused", "ended")
        return SessionInfo(
            session_id=self.session_id,
            status=shown,
            created_at=self.created_at,
            expires_at=self.expires_at,
            last_activity=self.last_activity,
            executions=self.executions,
            end_reason=self.end_reason,
            ended_at=self.ended_at,
            job_type=self.job_type,
            ttl_seconds=self.ttl_seconds,
            idle_timeout_seconds=self.idle_timeout_seconds,
            runtime=runtime,
        )


@dataclasses.dataclass
class _Live:
    """A running sandbox: the ``runsc run``/``runsc restore`` process and its output drain."""

    proc: asyncio.subprocess.Process
    drain: asyncio.Task[None]
    tail: list[bytes]


RecordSink = Callable[[SessionState, SessionExecution, str, str, int], Awaitable[None]]
RecordLookup = Callable[[str, str], Awaitable[SessionExecution | None]]  # (tenant, execution id)


class LocalSessions:
    """The session service of the local backend (``tako_shim.http.sessions`` calls it)."""

    def __init__(
        self, settings: Settings, executor: Any, record: RecordSink, lookup: RecordLookup | None = None
    ) -> None:
        """``executor``: the backend's ``LocalExecutor`` (runsc, cgroups, rootfs, install sandbox).
        ``record``: stores one execution in the job history (``GET /executions`` shows it); ``lookup``
        reads one back (a finished call's event stream, once it is no longer in memory)."""
        self.settings = settings
        self.executor = executor
        self.record = record
        self.lookup = lookup
        self.calls = session_live.TrackedCalls()
        self.root = Path(executor.work_dir) / "sessions"
        self.state_root = Path(executor.work_dir) / "session-state"
        self.runner_dir = Path(executor.work_dir) / "session-runner"
        self.sessions: dict[str, SessionState] = {}
        self.live: dict[str, _Live] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self.resolver = JobResolver(settings)

    # ------------------------------------------------------------------ lifecycle

    @property
    def runtime(self) -> str:
        return str(self.executor.runtime)

    def _require_sandbox(self) -> None:
        if self.runtime != "runsc":
            raise Unavailable(
                "Sessions need gVisor (runsc): this server runs without a sandbox (security_mode: permissive "
                "and runsc unusable), and a session never runs unsandboxed."
            )

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)
        for state in self.sessions.values():
            if state.status in ("ready", "busy", "starting"):
                await self._end(state, "server_restarted")  # its sandbox did not survive the restart
        self._reaper = asyncio.create_task(self._reap_loop(), name="tako-session-reaper")

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runner_dir.mkdir(exist_ok=True)
        target = self.runner_dir / sessions_spec.SESSION_RUNNER
        target.unlink(missing_ok=True)  # our own 0444 copy: a non-root server cannot overwrite it
        shutil.copyfile(session_runner.__file__, target)
        target.chmod(0o444)
        self.runner_dir.chmod(0o755)
        for meta in self.root.glob("*/meta.json"):
            try:
                state = SessionState(**json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable session state %s: %s", meta, exc)
                continue
            self.sessions[state.session_id] = state

    async def close(self) -> None:
        """Stop the reaper, pause every live session (a restart restores it; a failed pause ends it)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for state in list(self.sessions.values()):
            if state.session_id in self.live:
                async with self._lock(state.session_id):
                    if not await self._pause(state):
                        await self._end(state, "server_restarted")

    # ------------------------------------------------------------------ lookups

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self.locks.setdefault(session_id, asyncio.Lock())

    def _get(self, tenant: str, session_id: str, *, open_only: bool = True) -> SessionState:
        state = self.sessions.get(session_id)
        if state is None or state.tenant != tenant:
            raise NotFound("Session not found")  # another tenant's session does not exist for the caller
        if open_only and state.status == "ended":
            raise Gone(session_gone_detail(session_id, state.end_reason))
        return state

    async def get(self, tenant: str, session_id: str) -> SessionInfo:
        return self._get(tenant, session_id, open_only=False).info(self.runtime)

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        found = [s for s in self.sessions.values() if s.tenant == tenant]
        found.sort(key=lambda s: s.created_at, reverse=True)
        return [s.info(self.runtime) for s in found]

    def open_total(self) -> int:
        """Sessions of every tenant that have not ended (the ``takovm_shim_sessions_open`` gauge)."""
        return sum(1 for s in self.sessions.values() if s.status != "ended")

    def open_count(self, tenant: str) -> int:
        return sum(1 for s in self.sessions.values() if s.tenant == tenant and s.status != "ended")

    # ------------------------------------------------------------------ create

    def _fingerprint(self, body: CreateSessionRequest) -> str:
        return sha256_hex(canonical_json(body.model_dump(exclude={"idempotency_key"}, mode="json")))

    async def create(self, tenant: str, body: CreateSessionRequest) -> tuple[SessionInfo, bool]:
        """Start a session (its requirements installed first); (info, created). An idempotent replay of
        the same key and payload returns the existing session with ``created`` False."""
        self._require_sandbox()
        s = self.settings
        ttl = body.ttl_seconds or min(DEFAULT_TTL_SECONDS, s.session_max_ttl_seconds)
        if ttl > s.session_max_ttl_seconds:
            raise InvalidRequest(
                f"ttl_seconds: {ttl} exceeds session_max_ttl_seconds {s.session_max_ttl_seconds}"
            )
        idle = body.idle_timeout_seconds or DEFAULT_IDLE_TIMEOUT_SECONDS
        jt = self.resolver.job_type(body.job_type)
        requirements = self._requirements(body.requirements, jt)
        try:
            memory = memory_limit_mb(body.memory_limit or jt.memory_limit)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if memory < MIN_MEMORY_MB:
            raise InvalidRequest(f"memory_limit: {body.memory_limit} is below {MIN_MEMORY_MB}m")
        if memory > memory_limit_mb(s.session_max_memory_limit):
            raise InvalidRequest(
                f"memory_limit: {body.memory_limit} exceeds session_max_memory_limit "
                f"{s.session_max_memory_limit}"
            )
        fingerprint = self._fingerprint(body)
        async with self._create_lock:
            if body.idempotency_key:
                for existing in self.sessions.values():
                    if existing.tenant == tenant and existing.idempotency_key == body.idempotency_key:
                        if existing.fingerprint != fingerprint:
                            raise Conflict(IDEMPOTENCY_CONFLICT)
                        return existing.info(self.runtime), False
            if self.open_count(tenant) >= s.session_max_per_tenant:
                raise RateLimited(
                    f"Tenant '{tenant}' already has {self.open_count(tenant)} open sessions, its limit "
                    f"(session_max_per_tenant={s.session_max_per_tenant}). Delete one "
                    "(DELETE /sessions/{id}) or wait for one to end.",
                    headers={"Retry-After": "5"},
                )
            now = _now()
            state = SessionState(
                session_id="sess-" + uuid.uuid4().hex,
                tenant=tenant,
                status="starting",
                job_type=jt.name,
                requirements=requirements,
                created_at=_iso(now),
                expires_at=_iso(now + timedelta(seconds=ttl)),
                ttl_seconds=ttl,
                idle_timeout_seconds=idle,
                memory_limit_mb=memory,
                cpu_limit=float(body.cpu_limit or jt.cpu_limit or 1.0),
                last_activity=_iso(now),
                idempotency_key=body.idempotency_key,
                fingerprint=fingerprint,
            )
            self.sessions[state.session_id] = state
            await asyncio.to_thread(self._make_dirs, state)
        async with self._lock(state.session_id):
            try:
                if requirements:
                    await self._install(state)
                await self._launch(state, restore=False)
            except Exception as exc:
                log.warning("session %s failed to start: %s", state.session_id, exc)
                await self._end(state, "start_failed")
                if isinstance(exc, InvalidRequest | Unavailable):
                    raise
                raise Unavailable(f"Session could not start: {exc}") from None
            state.status = "ready"
            await asyncio.to_thread(self._save, state)
        return state.info(self.runtime), True

    def _requirements(self, requested: list[str] | None, jt: Any) -> list[str]:
        """The job type's requirements plus the requested ones (refused unless runtime requirements are
        allowed), each checked against the runner's grammar: the same rules as a job's."""
        from tako_shim.backends.local.sandbox.job import validate_requirements

        reqs = self.resolver._requirements(requested, jt)
        try:
            validate_requirements(reqs)
        except ValueError as exc:
            raise InvalidRequest(f"requirements: {exc}") from None
        return reqs

    def _dir(self, state: SessionState) -> Path:
        return self.root / state.session_id

    def _make_dirs(self, state: SessionState) -> None:
        base = self._dir(state)
        base.mkdir(mode=0o711)
        for name in ("in", "out", "code", "input", "bundle"):
            (base / name).mkdir()
        for name in ("in", "code", "input"):
            (base / name).chmod(0o755)
        os.chown(base / "out", sandbox.SANDBOX_UID, sandbox.SANDBOX_GID)
        (base / "out").chmod(0o700)
        if state.requirements:
            (base / "deps").mkdir()
            os.chown(base / "deps", sandbox.SANDBOX_UID, sandbox.SANDBOX_GID)
        self._save(state)

    def _save(self, state: SessionState) -> None:
        path = self._dir(state) / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(state)))
        tmp.replace(path)

    async def _install(self, state: SessionState) -> None:
        """The requirements, installed by the job executor's install sandbox (host network, /deps
        writable) before the session sandbox (no network) exists: user code never has egress."""
        from tako_shim.backends.local.sandbox.job import KILL_GRACE_S, SandboxJob

        ex = self.executor
        job = SandboxJob(
            job_id=state.session_id,
            code="",
            input_data={},
            requirements=state.requirements,
            timeout=self.settings.default_timeout,
            startup_timeout=self.settings.default_startup_timeout,
            memory_limit_mb=state.memory_limit_mb,
            cpu_limit=state.cpu_limit,
        )
        base = self._dir(state)
        (base / "code" / "job.json").write_text(ex.runner_config(job).job_json())
        (base / "code" / "job.json").chmod(0o444)
        teardowns: list[asyncio.Task[None]] = []
        budget = job.startup_timeout + KILL_GRACE_S + 5.0
        result = await ex._sandbox(job, base, base / "deps", "install", budget, asyncio.Event(), teardowns)
        await asyncio.gather(*teardowns, return_exceptions=True)
        error = (result.envelope or {}).get("error")
        if result.exit_code != 0 or not result.envelope or error:
            detail = error.get("message") if isinstance(error, dict) else result.stderr.strip()[-300:]
            raise InvalidRequest(f"requirements could not be installed: {detail or 'install sandbox failed'}")

    # ------------------------------------------------------------------ sandbox process

    def _runsc(self, *args: str) -> list[str]:
        ex = self.executor
        return [ex.runsc, "--root", str(self.state_root), f"--platform={ex.platform or 'ptrace'}",
                "--network=none", "--overlay2=none", *args]  # fmt: skip

    def _write_bundle(self, state: SessionState) -> Path:
        ex = self.executor
        base = self._dir(state)
        cid = sessions_spec.container_id(state.session_id)
        spec = sandbox.SandboxSpec(
            mode="run",
            rootfs=str(ex.work_dir / "rootfs"),
            etc_dir=str(ex.work_dir / "etc-run"),
            runner_dir=str(self.runner_dir),
            code_dir=str(base / "code"),
            input_dir=str(base / "input"),
            deps_dir=str(base / "deps") if state.requirements else None,
            cgroup_path=ex.cgroups.oci_path(cid),
            memory_limit_bytes=state.memory_limit_mb * sandbox.MIB,
            pids_limit=100,
            cpu_limit=state.cpu_limit,
            tmp_size_bytes=self.settings.session_tmp_size_mb * sandbox.MIB,
            output_size_bytes=sandbox.MIB,
            max_file_bytes=64 * sandbox.MIB,
            host_hard_limits=ex._hard_limits,
            system_root=str(ex.system_root),
            system_dirs=tuple(name for name, target in ex._system_dirs.items() if target is None),
        )
        oci = sessions_spec.session_oci_spec(
            spec, channel_in=str(base / "in"), channel_out=str(base / "out"),
            max_output=self.settings.max_stdout_bytes,
        )  # fmt: skip
        (base / "bundle" / "config.json").write_text(json.dumps(oci))
        limits = cgroups.Limits(spec.memory_limit_bytes, sandbox.host_pids_limit(100), state.cpu_limit)
        ex.cgroups.create(cid, limits)
        return base / "bundle"

    async def _launch(self, state: SessionState, *, restore: bool) -> None:
        """Start (or restore) the session's sandbox; for a fresh start wait for the runner's ``ready``."""
        base = self._dir(state)
        cid = sessions_spec.container_id(state.session_id)
        bundle = await asyncio.to_thread(self._write_bundle, state)
        await asyncio.to_thread(self._forget_container, cid)
        if restore:
            argv = self._runsc("restore", "--image-path", str(base / "image"), "--bundle", str(bundle), cid)
        else:
            argv = self._runsc("run", "--bundle", str(bundle), cid)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        tail: list[bytes] = []
        live = _Live(proc, asyncio.create_task(_drain(proc, tail)), tail)
        self.live[state.session_id] = live
        if restore:
            return
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (base / "out" / "ready").exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                await self._stop(state)
                detail = b"".join(tail).decode("utf-8", "replace").strip()[-300:]
                raise Unavailable(f"session sandbox did not start: {detail or 'timed out'}")
            await asyncio.sleep(0.005)

    def _forget_container(self, cid: str) -> None:
        subprocess.run(self._runsc("delete", "-force", cid), capture_output=True, timeout=30, check=False)

    async def _stop(self, state: SessionState) -> bool:
        """Kill the sandbox and remove its container and cgroups; True if the memory cgroup saw an OOM."""
        cid = sessions_spec.container_id(state.session_id)
        live = self.live.pop(state.session_id, None)
        await asyncio.to_thread(
            subprocess.run, self._runsc("kill", cid, "KILL"), capture_output=True, timeout=30, check=False
        )
        if live is not None:
            try:
                await asyncio.wait_for(live.proc.wait(), 10)
            except TimeoutError:
                live.proc.kill()
            live.drain.cancel()
        ex = self.executor
        oom = bool(ex.cgroups is not None and ex.cgroups.oom_killed(cid))
        await asyncio.to_thread(self._forget_container, cid)
        if ex.cgroups is not None:
            await asyncio.to_thread(cgroups.remove_dirs, ex.cgroups.dirs(cid))
        return oom

    async def _end(self, state: SessionState, reason: str) -> None:
        """End a session: its sandbox and files are removed at once; its ``meta.json`` stays (410s)."""
        if state.status == "ended":
            return
        await self._stop(state)  # first: a session shown as ended has no sandbox any more
        state.status = "ended"
        state.end_reason = reason
        state.ended_at = _iso(_now())
        base = self._dir(state)

        def remove() -> None:
            for child in base.iterdir() if base.exists() else []:
                if child.name != "meta.json":
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            if base.exists():
                self._save(state)

        await asyncio.to_thread(remove)
        log.info("session %s ended: %s", state.session_id, reason)

    # ------------------------------------------------------------------ pause / resume

    async def _pause(self, state: SessionState) -> bool:
        """Checkpoint the sandbox to ``image/`` (then it stops: no memory while idle).

        The caller holds the session's lock."""
        live = self.live.get(state.session_id)
        if live is None or state.status not in ("ready",):
            return False
        cid = sessions_spec.container_id(state.session_id)
        image = self._dir(state) / "image"
        await asyncio.to_thread(shutil.rmtree, image, True)
        image.mkdir(mode=0o700)
        done = await asyncio.to_thread(
            subprocess.run, self._runsc("checkpoint", "--image-path", str(image), cid),
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            log.warning("session %s: checkpoint failed: %s", state.session_id, done.stderr.decode()[-300:])
            return False
        self.live.pop(state.session_id, None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.proc.wait(), 10)
        live.drain.cancel()
        await asyncio.to_thread(self._forget_container, cid)
        state.status = "paused"
        await asyncio.to_thread(self._save, state)
        log.info("session %s paused to disk", state.session_id)
        return True

    async def _resume(self, state: SessionState) -> None:
        """Restore the sandbox from its image (the image is removed after the next reply: the restore
        reads it while the sandbox starts)."""
        await self._launch(state, restore=True)
        state.status = "ready"
        await asyncio.to_thread(self._save, state)

    # ------------------------------------------------------------------ execute

    async def execute(
        self, tenant: str, session_id: str, body: SessionExecuteRequest, idempotency_key: str | None
    ) -> SessionExecution:
        state = self._get(tenant, session_id)
        timeout = body.timeout or self.settings.default_timeout
        if timeout > self.settings.max_timeout:
            raise InvalidRequest(f"timeout: {timeout} exceeds max_timeout {self.settings.max_timeout}")
        fingerprint = sha256_hex(canonical_json({"code": body.code, "timeout": body.timeout}))
        tracked = self._track(state, idempotency_key)
        try:
            async with self._lock(session_id):
                state = self._get(tenant, session_id)  # it may have ended while this call waited its turn
                if idempotency_key and idempotency_key in state.replies:
                    kept = state.replies[idempotency_key]
                    if kept["fingerprint"] != fingerprint:
                        raise Conflict(IDEMPOTENCY_CONFLICT)
                    return SessionExecution.model_validate(kept["reply"])
                if tracked is None:  # the request that registered this key's id failed before it ran
                    tracked = self._track(state, idempotency_key, replace=True)
                    assert tracked is not None
                if state.status == "paused":
                    await self._resume(state)
                state.status = "busy"
                started = _now()
                tracked.set_status("running")
                try:
                    execution = await self._call(state, body.code, timeout, tracked)
                finally:
                    if state.status == "busy":
                        state.status = "ready"
                self.calls.finished(tracked, execution)
                state.executions += 1
                state.last_activity = _iso(_now())
                if state.status == "ready":  # restored and answering: its checkpoint image is not needed
                    await asyncio.to_thread(shutil.rmtree, self._dir(state) / "image", True)
                if idempotency_key:
                    state.replies[idempotency_key] = {
                        "fingerprint": fingerprint,
                        "reply": execution.model_dump(mode="json"),
                    }
                    while len(state.replies) > MAX_KEYS_KEPT:
                        state.replies.pop(next(iter(state.replies)))
                if state.status != "ended":
                    await asyncio.to_thread(self._save, state)
        except BaseException:
            if tracked is not None and tracked.execution is None:
                self.calls.drop(tracked)  # refused or cancelled before it ran: nothing to stream
            raise
        await self.record(state, execution, body.code, _iso(started), timeout)
        return execution

    def _track(
        self, state: SessionState, idempotency_key: str | None, *, replace: bool = False
    ) -> session_live.Tracked | None:
        """Register the call (``queued``) under its execution id, derived from the key when there is one
        (``execution_id_for_key``), so its event stream exists before it runs. None for a key that was
        already answered or is being answered (that request owns the id)."""
        if idempotency_key is None:
            execution_id = str(uuid.uuid4())
        else:
            execution_id = execution_id_for_key(state.session_id, idempotency_key)
            if not replace and (idempotency_key in state.replies or self.calls.get(execution_id)):
                return None
        limit = self.settings.max_stdout_bytes
        tracked = session_live.Tracked(
            state.tenant, state.session_id, execution_id, LiveOutput({"stdout": limit, "stderr": limit})
        )
        self.calls.add(tracked)
        return tracked

    async def events(
        self, tenant: str, session_id: str, execution_id: str, cursor: Cursor
    ) -> AsyncGenerator[JobEvent, None]:
        """The call's event stream beyond ``cursor``: live while it runs, its record once it ended
        (``tako_shim.backends.events``); NotFound for another tenant's session or an unknown call."""
        self._get(tenant, session_id, open_only=False)
        tracked = self.calls.get(execution_id)
        if tracked is not None and tracked.session_id == session_id and tracked.tenant == tenant:
            async for event in session_live.stream(tracked, cursor):
                yield event
            return
        execution = await self.lookup(tenant, execution_id) if self.lookup is not None else None
        if execution is None or execution.session_id != session_id:
            raise NotFound("Execution not found")
        for event in session_live.replay(execution, cursor):
            yield event

    async def _call(
        self, state: SessionState, code: str, limit_s: int, tracked: session_live.Tracked
    ) -> SessionExecution:
        base = self._dir(state)
        number = state.next_number
        state.next_number += 1
        execution_id = tracked.execution_id
        tail = session_live.LiveTail(
            base / "out" / f"live-{number}", 4 * self.settings.max_stdout_bytes * 6 + 65536
        )  # both streams' kept text, JSON-escaped (at most 6 bytes a character), with room
        next_tail = 0.0
        request = base / "in" / f"req-{number}.json"
        await asyncio.to_thread(_write_atomic, request, json.dumps({"code": code, "timeout": limit_s}))
        reply_path = base / "out" / f"resp-{number}.json"
        live = self.live.get(state.session_id)
        grace = self.settings.session_interrupt_grace_seconds
        deadline = time.monotonic() + limit_s + grace + 1.0
        started = time.monotonic()
        reply: dict[str, Any] | None = None
        reason: str | None = None
        while True:
            reply = _read_reply(
                reply_path, self.settings.max_stdout_bytes * 4 + sessions_spec.MAX_REPLY_BYTES_OVERHEAD
            )
            if reply is not None:
                tail.pump(tracked.live)
                break
            if time.monotonic() >= next_tail:
                tail.pump(tracked.live)
                next_tail = time.monotonic() + LIVE_POLL_S
            if live is None or live.proc.returncode is not None:
                reason = "crashed"
                if live is not None:
                    log.warning(
                        "session %s sandbox exited %s: %s",
                        state.session_id,
                        live.proc.returncode,
                        b"".join(live.tail).decode("utf-8", "replace")[-500:],
                    )
                break
            if time.monotonic() > deadline:
                reason = "killed_after_timeout"
                break
            await asyncio.sleep(REPLY_POLL_S)
        for done in (request, reply_path, tail.path):
            with contextlib.suppress(OSError):
                done.unlink()
        elapsed = int((time.monotonic() - started) * 1000)
        if reason is None and _out_entries(base / "out") > sessions_spec.MAX_OUT_ENTRIES:
            reason = "crashed"  # the reply directory is the channel, not storage: a session filling it ends
        if reason is not None:
            oom = await self._stop(state)
            if oom:
                reason = "oom_killed"
            elif state.end_reason == "expired":  # the reaper stopped it: the TTL ran out during the call
                reason = "expired"
            await self._end(state, reason)
            messages = {
                "oom_killed": "The session ran out of memory and was ended (state lost)",
                "killed_after_timeout": f"Code ignored the interrupt for {grace} s after its {limit_s} s "
                "timeout; the session was killed",
                "crashed": "The session's interpreter exited; the session has ended",
                "expired": "The session reached its ttl_seconds during this call and has ended",
            }
            status = "timeout" if reason == "killed_after_timeout" else "failed"
            return SessionExecution(
                execution_id=execution_id, session_id=state.session_id, status=status,
                error={"type": reason, "message": messages[reason], "traceback": None}, duration_ms=elapsed,
            )  # fmt: skip
        said = reply.get("status") if reply else None
        status = said if said in ("succeeded", "failed", "timeout") else "failed"
        return SessionExecution(
            execution_id=execution_id,
            session_id=state.session_id,
            status=status,
            stdout=str(reply.get("stdout") or "") if reply else "",
            stderr=str(reply.get("stderr") or "") if reply else "",
            result=reply.get("result") if reply and isinstance(reply.get("result"), str) else None,
            error=reply.get("error") if reply and isinstance(reply.get("error"), dict) else None,
            duration_ms=reply.get("duration_ms")
            if reply and isinstance(reply.get("duration_ms"), int)
            else elapsed,
        )

    # ------------------------------------------------------------------ delete and reaper

    async def delete(self, tenant: str, session_id: str) -> None:
        state = self._get(tenant, session_id)
        async with self._lock(session_id):
            await self._end(state, "deleted")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap_once()
            except Exception:  # the reaper must outlive one failure
                log.exception("session reaper")

    async def reap_once(self) -> None:
        now = _now()
        for state in list(self.sessions.values()):
            if state.status == "ended":
                continue
            lock = self._lock(state.session_id)
            busy = lock.locked()
            deadlines = sessions_spec.Deadlines(
                datetime.fromisoformat(state.expires_at), state.idle_timeout_seconds
            )
            reason = deadlines.end_reason(now, datetime.fromisoformat(state.last_activity), busy)
            if reason == "expired" and busy:
                await self._stop(state)  # the running call sees the sandbox gone and ends the session
                state.end_reason = "expired"
                continue
            if reason is not None:
                async with lock:
                    await self._end(state, reason)
                continue
            live = self.live.get(state.session_id)
            if live is not None and not busy and live.proc.returncode is not None:
                async with lock:
                    await self._end(state, "oom_killed" if await self._stop(state) else "crashed")
                continue
            pause_after = self.settings.session_pause_after_seconds
            if state.status == "ready" and sessions_spec.should_pause(
                now, datetime.fromisoformat(state.last_activity), pause_after, busy
            ):
                async with lock:
                    await self._pause(state)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o444)
    tmp.replace(path)


def _read_reply(path: Path, limit: int) -> dict[str, Any] | None:
    """A reply the sandbox wrote, read without following links (the directory is the sandbox's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return {"status": "failed", "error": {"type": "internal_error", "message": "reply too large"}}
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _out_entries(path: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in os.scandir(path))
    return 0


async def _drain(proc: asyncio.subprocess.Process, tail: list[bytes]) -> None:
    """Read the sandbox's stdout/stderr (fd-level writes of user code land here) keeping a short tail."""

    async def pump(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            tail.append(chunk)
            while sum(map(len, tail)) > 8192:
                tail.pop(0)

    await asyncio.gather(pump(proc.stdout), pump(proc.stderr))


def session_row(
    state: SessionState, execution: SessionExecution, code: str, started_at: str, timeout: int
) -> Any:
    """The job-history row of one session execution (``GET /executions`` lists it with ``session_id``)."""
    from tako_shim.backends.local.store import JobRow

    error = execution.error.model_dump() if execution.error is not None else None
    if error is not None:
        error.pop("traceback", None)
        error["phase"] = "execution"
    return JobRow(
        job_id=execution.execution_id,
        tenant=state.tenant,
        status=execution.status,
        job_type=state.job_type,
        created_at=started_at,
        started_at=started_at,
        ended_at=_iso(_now()),
        duration_ms=execution.duration_ms,
        code=code,
        input_data={},
        requirements=list(state.requirements),
        timeout=timeout,
        startup_timeout=0,
        code_hash=sha256_hex(code),
        input_hash=sha256_hex(canonical_json({})),
        parent_execution_id=state.session_id,
        relationship="session",
        outcome={
            "stdout": execution.stdout,
            "stderr": execution.stderr,
            "error": error,
            "exit_code": 0 if execution.status == "succeeded" else 1,
            "runtime": "runsc",
            "session_result": execution.result,
        },
    )


async def attach_sessions(backend: Any) -> LocalSessions | None:
    """The local backend's session service over its executor (None when the executor is a test stand-in
    without sandboxes); started, so the reaper runs and paused sessions from the last run are back."""
    local = getattr(backend._executor, "executor", backend._executor)  # under the warm pool, if any
    if not hasattr(local, "work_dir") or not hasattr(local, "cgroups"):
        return None

    async def record(
        state: SessionState, execution: SessionExecution, code: str, started: str, limit: int
    ) -> None:
        try:
            await backend._db(backend.store.insert, session_row(state, execution, code, started, limit))
        except Exception:  # the call's answer is the product; its audit row is best effort, logged
            log.exception("could not record session execution %s", execution.execution_id)

    async def lookup(tenant: str, execution_id: str) -> SessionExecution | None:
        row = await backend._db(backend.store.get, tenant, execution_id)
        if row is None or row.relationship != "session":
            return None
        return session_live.execution_from_row(row)

    service = LocalSessions(backend.settings, local, record, lookup)
    await service.start()
    return service
