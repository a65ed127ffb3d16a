"""Template snapshots (issue #20): every job gets a *fresh restore* of a checkpointed sandbox whose
interpreters already started and imported the job type's ``preload`` modules.

Per shape (the job's limits, its preload set and its requirement set) a *template* is built once, off
the request path: ``runsc run -detach`` of the run bundle with pipes on all three stdio fds, pid 1 the
trusted ``LAUNCHER`` (imports the runner, checks egress, pre-starts the user interpreter, which imports
the preload modules and then blocks on a pipe), ``TAKO-WARM-READY`` on stdout, then one ``runsc
checkpoint -compression=none -exclude-committed-zero-pages``; the template sandbox is then deleted.

A job is a single-use attached ``runsc restore`` of that image with a bundle that differs from the
template's only in the per-job host directories bound at /code, /input and /output and in its
cgroupsPath (the same cgroup code as a cold run, ``cgroups.py``), and new stdout/stderr pipes. The host
writes ``go <frame key>`` on its stdin: the key reaches pid 1 (non-dumpable, ``runner.protect_self``)
only after the restore, and the user's code runs in the pre-started *child* interpreter, which never
holds it. The child re-seeds what a snapshot would duplicate (``random``, ``tempfile`` names, NumPy's
global generator, OpenSSL's pool) before the user's first line; ``os.urandom``/``secrets``/``uuid4``
read the Sentry's getrandom, which is not part of the image. A restored sandbox runs one job and is
destroyed; it is never restored twice into the same container.

Images live in ``<data_dir>/snapshots/<key>/`` (``SnapshotStore``): the key is a digest over the
runner's code, the launcher, the shape, runsc's version and platform and the sandboxes' interpreter
(``template_key``), so any change builds a new template; images older than ``max_age_s`` are removed
(``rotate``) and rebuilt. Any failed restore (missing or corrupt image, runsc error) falls back to a cold
start with a warning (``RestoreFailed``; the launcher prints ``TAKO-GO`` before user code exists, so a
restore without it never ran user code).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tako_runner import runner as runner_module
from tako_shim.backends.local.sandbox import artifacts, cgroups, oci, runsc
from tako_shim.backends.local.sandbox import job as job_module

if TYPE_CHECKING:
    from tako_shim.backends.local.sandbox.executor import LocalExecutor

log = logging.getLogger(__name__)

FORMAT = 1
META = "meta.json"
IMAGE = "image"
READY_MARKER = b"TAKO-WARM-READY"
GO_MARKER = b"TAKO-GO"
READY_TIMEOUT_S = 120.0  # a template importing pandas takes seconds in gVisor
RESTORE_TIMEOUT_S = 30.0
# After a failed build or restore, a shape runs cold this long before its template is tried again: on a host
# where checkpoint or restore always fails, jobs must not each pay for another attempt.
RETRY_AFTER_FAILURE_S = 300.0
MAX_PRELOAD = 50
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# The end of every pre-started user interpreter (warm pool and templates): run /code/main.py as
# ``python -u /code/main.py`` would (argv, sys.path[0], a fresh __main__, tracebacks without the
# bootstrap's frame, exit code 1 after an uncaught exception, SystemExit's status and message,
# non-daemon threads joined, atexit handlers run), then ``os._exit``: no interpreter teardown (module
# and GC finalisation is pure CPU, tens of ms with pandas loaded, for a process that ends anyway).
RUN_MAIN = r"""import builtins, types
del sys.argv[1:]
sys.argv[0] = "/code/main.py"
sys.path[0] = "/code"
main = types.ModuleType("__main__")
main.__file__ = "/code/main.py"
main.__builtins__ = builtins
sys.modules["__main__"] = main
status = 0
try:
    with open("/code/main.py", "rb") as f:
        source = f.read()
    exec(compile(source, "/code/main.py", "exec"), main.__dict__)
except SystemExit as stop:
    if stop.code is None:
        status = 0
    elif isinstance(stop.code, int):
        status = stop.code & 0xFF
    else:
        print(stop.code, file=sys.stderr)
        status = 1
except BaseException as exc:
    exc = exc.with_traceback(exc.__traceback__.tb_next if exc.__traceback__ else None)
    sys.excepthook(type(exc), exc, exc.__traceback__)
    status = 1
threading = sys.modules.get("threading")
if threading is not None:
    threading._shutdown()
import atexit
atexit._run_exitfuncs()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
os._exit(status)
"""

# The start of a launcher (pid 1, trusted): the runner and the modules its run mode imports lazily,
# non-dumpable, egress checked once in this network namespace (fixed at sandbox creation), and what the
# pre-started interpreter is started with.
PRELUDE = r"""import os, sys
sys.path.insert(0, "/runner")
import runner
import resource, select  # runner.main imports them in every job: loaded before the checkpoint
runner.protect_self()
opened = runner.egress_reachable(dict(runner.DEFAULTS))
if opened:
    sys.stderr.write("tako launcher: egress open: %s\n" % ", ".join(opened))
    sys.stderr.flush()
    os._exit(2)
config = dict(runner.DEFAULTS, python="/usr/bin/python3")
expected_argv = [config["python"], "-u", config["code_path"]]
expected_env = runner.base_env(config)
if os.path.isdir(config["deps_dir"]):
    expected_env["PYTHONPATH"] = config["deps_dir"]
"""

# The end of a launcher, after a valid ``go [key]`` line (``words``): stdin closed, then the runner's
# run mode in this process, its frame authenticated with the key.
RUN_RUNNER = r"""devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)
os.close(devnull)
code = runner.main(["run", "--config", "/code/job.json"], frame_key=words[1] if len(words) == 2 else b"")
sys.stdout.flush()
os._exit(code)
"""

# In a launcher: the runner's ``start_process`` of ``python -u /code/main.py`` is answered with the
# pre-started interpreter (``child``, released by writing ``go`` on ``write_end``) when argv, cwd and
# environment are exactly what it was started with; anything else is a real spawn.
HANDOFF = r"""spawn = runner.start_process

def start_process(argv, *, env, cwd):
    global child
    spare, child = child, None
    if spare is not None:
        same = list(argv) == expected_argv and env == expected_env and cwd == config["work_dir"]
        if same and spare.poll() is None:
            os.write(write_end, b"go")
            os.close(write_end)
            return spare
        spare.kill()
        spare.wait(5.0)
        os.close(spare.stdout_fd)
        os.close(spare.stderr_fd)
    return spawn(argv, env=env, cwd=cwd)

runner.start_process = start_process
"""

# The user interpreter (pre-started by the launcher): imports the preload set, reports on ``ready``,
# blocks on ``go``, then re-seeds what the image would otherwise share between jobs and ``RUN_MAIN``.
BOOTSTRAP = (
    r"""
import os, sys
go_fd, ready_fd = int(sys.argv[1]), int(sys.argv[2])
for name in sys.argv[3].split(","):
    if name:
        try:
            __import__(name)
        except Exception:
            pass
import random  # re-seeded after go: imported here, not in every job
os.write(ready_fd, b"R")
os.close(ready_fd)
go = os.read(go_fd, 2)
os.close(go_fd)
if go != b"go":
    os._exit(3)
random.seed()
mod = sys.modules.get("tempfile")
if mod is not None:
    mod._name_sequence = None
mod = sys.modules.get("numpy.random")
if mod is not None:
    try:
        mod.seed()
    except Exception:
        pass
mod = sys.modules.get("ssl")
if mod is not None:
    mod.RAND_add(os.urandom(64), 64.0)
del mod, go, go_fd, ready_fd, name
"""
    + RUN_MAIN
)

# pid 1 of a template (trusted, stdlib only, ``python3 -I -S -c LAUNCHER BOOTSTRAP PRELOAD``). After
# READY it is checkpointed while blocked on stdin; a restore answers ``ping`` with READY (the warm pool)
# and ``go <key>`` with ``TAKO-GO``, then runs the runner in this process with that key.
LAUNCHER = (
    PRELUDE
    + r"""
go_r, write_end = os.pipe()
ready_r, ready_w = os.pipe()
os.set_inheritable(go_r, True)
os.set_inheritable(ready_w, True)
child = runner.start_process(
    [config["python"], "-u", "-c", sys.argv[1], str(go_r), str(ready_w), sys.argv[2]],
    env=expected_env, cwd=config["work_dir"],
)
os.close(go_r)
os.close(ready_w)
if os.read(ready_r, 1) != b"R":
    sys.stderr.write("tako template: the user interpreter did not start\n")
    sys.stderr.flush()
    os._exit(4)
os.close(ready_r)
"""
    + HANDOFF
    + r"""
def read_line():
    line = b""
    while not line.endswith(b"\n") and len(line) < 256:
        more = os.read(0, 256 - len(line))
        if not more:
            break
        line += more
    return line

os.write(1, b"TAKO-WARM-READY\n")
line = read_line()
while line == b"ping\n":
    os.write(1, b"TAKO-WARM-READY\n")
    line = read_line()
words = line.split()
if not line.endswith(b"\n") or not words or words[0] != b"go" or len(words) > 2:
    os._exit(3)
os.write(1, b"TAKO-GO\n")
"""
    + RUN_RUNNER
)


class RestoreFailed(Exception):
    """A restore did not reach ``TAKO-GO`` (no user code ran): the caller runs the job cold."""


@functools.cache
def default_preload() -> tuple[str, ...]:
    """The runner's own top-level imports (what a template loads when the job type names none)."""
    tree = ast.parse(Path(runner_module.__file__).read_text(encoding="utf-8"))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return tuple(sorted({n for n in names if n != "__future__"}))


def check_preload(modules: list[str]) -> list[str]:
    """Module names only (``pandas``, ``numpy.linalg``), at most ``MAX_PRELOAD``; else ValueError."""
    if len(modules) > MAX_PRELOAD:
        raise ValueError(f"preload lists {len(modules)} modules; the limit is {MAX_PRELOAD}")
    for name in modules:
        if not isinstance(name, str) or not _MODULE_RE.match(name):
            raise ValueError(f"preload entry {name!r} is not a module name (like pandas or numpy.linalg)")
    return list(modules)


@dataclass(frozen=True)
class Shape:
    """What a template is built from: a job fits an image of exactly its shape."""

    memory_limit_mb: int
    pids_limit: int
    cpu_limit: float
    max_total_artifact_bytes: int
    preload: tuple[str, ...]
    deps: str  # the requirement-cache entry bound at /deps and its commit digest, "" without requirements

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "preload": list(self.preload)}


def shape_of(job: job_module.SandboxJob, deps: str = "") -> Shape:
    preload = default_preload() if job.preload is None else tuple(job.preload)
    return Shape(
        job.memory_limit_mb, job.pids_limit, job.cpu_limit, job.max_total_artifact_bytes, preload, deps
    )


def template_key(shape: Shape, environment: dict[str, Any]) -> str:
    """The image's name: sha256 over the shape and everything the image embeds (``environment``: the
    runner's code, the launcher, runsc's version and platform, the interpreter). Any change -> new key."""
    blob = json.dumps({"format": FORMAT, "shape": shape.as_dict(), **environment}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def image_environment(
    runner_code: bytes, runsc_version: str, platform: str, interpreter: Any, sandbox_code: bytes = b""
) -> dict[str, Any]:
    """The non-shape inputs of ``template_key`` (``sandbox_code``: the source that builds the OCI spec,
    so a change to the sandbox's shape rebuilds every template instead of waiting for rotation)."""
    launcher = hashlib.sha256((LAUNCHER + BOOTSTRAP).encode("utf-8")).hexdigest()
    return {
        "runner": hashlib.sha256(runner_code).hexdigest(),
        "sandbox": hashlib.sha256(sandbox_code).hexdigest(),
        "launcher": launcher,
        "runsc": runsc_version,
        "platform": platform,
        "interpreter": interpreter,
    }


class SnapshotStore:
    """``root/<key>/{image/, meta.json}``; an entry exists only once complete (one ``rename``)."""

    def __init__(self, root: Path, max_age_s: float) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self._seen: dict[str, float] = {}  # key -> created_at of a published entry
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)

    def lookup(self, key: str, now: float | None = None) -> Path | None:
        """The image directory of a complete, fresh entry for ``key``, else None (meta.json is read
        once per entry; later lookups check its age and that it is still there, one stat)."""
        entry = self.root / key
        now = now or time.time()
        created = self._seen.get(key)
        if created is None:
            try:
                meta = json.loads((entry / META).read_text())
                if meta.get("key") != key or not (entry / IMAGE).is_dir():
                    return None
                created = float(meta["created_at"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            self._seen[key] = created
        if now - created > self.max_age_s or not (entry / META).exists():
            self._seen.pop(key, None)
            return None
        return entry / IMAGE

    def meta(self, key: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / key / META).read_text())
        return data

    def staging(self) -> Path:
        path = self.root / f".staging-{secrets.token_hex(6)}"
        (path / IMAGE).mkdir(parents=True)
        return path

    def publish(self, staged: Path, key: str, meta: dict[str, Any], now: float | None = None) -> Path:
        (staged / META).write_text(json.dumps({**meta, "key": key, "created_at": now or time.time()}))
        target = self.root / key
        if target.exists():
            self.discard(key)
        os.rename(staged, target)
        return target / IMAGE

    def discard(self, key: str) -> None:
        """Remove an entry (a failed restore from it, or rotation)."""
        entry = self.root / key
        self._seen.pop(key, None)
        if entry.exists():
            aside = self.root / f".removed-{secrets.token_hex(6)}"
            with contextlib.suppress(OSError):
                os.rename(entry, aside)
                shutil.rmtree(aside, ignore_errors=True)

    def rotate(self, now: float | None = None) -> list[str]:
        """Remove expired entries and leftovers of interrupted builds; returns the removed names."""
        now = now or time.time()
        removed = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                if now - entry.stat().st_mtime > 3600:  # a build that died (a live one takes seconds)
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
            elif self.lookup(entry.name, now) is None:
                self.discard(entry.name)
                removed.append(entry.name)
        return removed


class Snapshots:
    """Builds templates in the background and runs jobs from fresh restores of them."""

    def __init__(self, executor: LocalExecutor, root: Path, max_age_s: float) -> None:
        self.executor = executor
        self.store = SnapshotStore(root, max_age_s)
        assert executor.runsc is not None
        self._environment = image_environment(
            Path(runner_module.__file__).read_bytes(),
            executor.version or "",
            executor.platform or "",
            {"root": str(executor.system_root), "manifest": executor.rootfs_manifest},
            b"".join(
                Path(m.__file__ or "").read_bytes()
                for m in (oci, cgroups, sys.modules[type(executor).__module__])
            ),
        )
        self._building: dict[str, asyncio.Task[Any]] = {}
        self._specs: dict[str, dict[str, Any]] = {}  # key -> template spec (read once per image)
        self._retry_at: dict[str, float] = {}  # key -> monotonic time before which no build is tried
        self.stats = {"restored": 0, "fallbacks": 0, "built": 0, "build_failures": 0}
        self.used_sandboxes: deque[str] = deque(maxlen=1000)  # container ids, one per restore
        self.store.rotate()

    # ------------------------------------------------------------------ templates

    def key(self, shape: Shape) -> str:
        return template_key(shape, self._environment)

    def image(self, shape: Shape) -> tuple[str, Path] | None:
        """The image for ``shape`` if built (else None, and a build is started in the background)."""
        key = self.key(shape)
        path = self.store.lookup(key)
        if path is None and key not in self._building and time.monotonic() >= self._retry_at.get(key, 0.0):
            # in the executor's background set: ``drain``/``close`` wait for it (a template is a
            # detached sandbox; a cancelled build still deletes it)
            task = self.executor._spawn_background(self._build(key, shape))
            self._building[key] = task
            task.add_done_callback(lambda _t: self._building.pop(key, None))
        return (key, path) if path is not None else None

    async def ensure(self, shape: Shape) -> Path | None:
        """Build the image for ``shape`` now unless it exists (tests, benchmarks, the warm pool)."""
        key = self.key(shape)
        path = self.store.lookup(key)
        if path is not None:
            return path
        task = self._building.get(key)
        if task is None:
            self.image(shape)
            task = self._building.get(key)
        if task is not None:
            await asyncio.shield(task)
        return self.store.lookup(key)

    async def _build(self, key: str, shape: Shape) -> None:
        try:
            await self._checkpoint(key, shape)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats["build_failures"] += 1
            self._retry_at[key] = time.monotonic() + RETRY_AFTER_FAILURE_S
            log.warning(
                "snapshot template %s could not be built (jobs run cold; next try in %.0f s): %s",
                key,
                RETRY_AFTER_FAILURE_S,
                exc,
            )
            return
        self.stats["built"] += 1
        await asyncio.to_thread(self.store.rotate)

    def restore_failed(self, key: str) -> None:
        """A restore from ``key`` failed: drop the image and run that shape cold for a while."""
        self.stats["fallbacks"] += 1
        self.store.discard(key)
        self._retry_at[key] = time.monotonic() + RETRY_AFTER_FAILURE_S

    def _template_job(self, shape: Shape) -> job_module.SandboxJob:
        return job_module.SandboxJob(
            "template", "", {}, [], 1, 10,
            memory_limit_mb=shape.memory_limit_mb, pids_limit=shape.pids_limit, cpu_limit=shape.cpu_limit,
            max_total_artifact_bytes=shape.max_total_artifact_bytes,
        )  # fmt: skip

    async def _checkpoint(self, key: str, shape: Shape) -> Path:
        ex = self.executor
        cid = f"tako-tmpl-{secrets.token_hex(6)}"
        job_dir = await asyncio.to_thread(empty_job_dir, ex._jobs_dir)
        staged = await asyncio.to_thread(self.store.staging)
        deps = Path(shape.deps.split("@", 1)[0]) if shape.deps else None
        process: asyncio.subprocess.Process | None = None
        try:
            template = self._template_job(shape)
            bundle = await asyncio.to_thread(ex._write_bundle, job_dir, "run", cid, deps, template, None)
            spec = json.loads((bundle / "config.json").read_text())
            spec["process"]["args"] = launcher_args(shape.preload)
            (bundle / "config.json").write_text(json.dumps(spec))
            argv = [*ex._runsc_argv(None, "none"), "run", "-detach", "--bundle", str(bundle), cid]
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert process.stdout is not None and process.stderr is not None
            line = await first_line(process, READY_TIMEOUT_S)
            if line.strip() != READY_MARKER:
                detail = b""
                with contextlib.suppress(TimeoutError):
                    detail = await asyncio.wait_for(process.stderr.read(), 2.0)
                raise RuntimeError(f"template {cid} did not become ready: {line!r} {detail[-300:]!r}")
            ckpt = [
                *ex._runsc_argv(None, "none"), "checkpoint", "-compression=none",
                "-exclude-committed-zero-pages", "--image-path", str(staged / IMAGE), cid,
            ]  # fmt: skip
            done = await asyncio.create_subprocess_exec(
                *ckpt, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await done.communicate()
            if done.returncode != 0:
                raise RuntimeError(f"runsc checkpoint exited {done.returncode}: {err[-300:]!r}")
            meta = {"shape": shape.as_dict(), "spec": spec, **self._environment}
            path = await asyncio.to_thread(self.store.publish, staged, key, meta)
            log.info("snapshot template %s built for %s", key, shape)
            return path
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staged, True)
            raise
        finally:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.shield(asyncio.to_thread(ex._cleanup, None, cid, job_dir))

    # ------------------------------------------------------------------ restoring

    def template_spec(self, key: str) -> dict[str, Any]:
        spec = self._specs.get(key)
        if spec is None:
            spec = self.store.meta(key)["spec"]
            self._specs[key] = spec
        return spec

    def restore_bundle(self, key: str, job_dir: Path, cid: str, memory_bytes: int, job: Any) -> Path:
        """The template's spec with this job's /code, /input, /output sources and cgroup (created here
        with the template's limits, ``cgroups.py`` as for a cold run); one JSON write per job."""
        ex = self.executor
        assert ex.cgroups is not None
        spec = self.template_spec(key)
        sources = {"/code": job_dir / "code", "/input": job_dir / "input", "/output": job_dir / "output"}
        artifacts.mount_output(job_dir / "output", artifacts.output_bytes(job))
        mounts = [
            {**m, "source": str(sources[m["destination"]])} if m["destination"] in sources else m
            for m in spec["mounts"]
        ]
        linux = {**spec["linux"], "cgroupsPath": ex.cgroups.oci_path(cid)}
        bundle = job_dir / "bundle-restore"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps({**spec, "mounts": mounts, "linux": linux}))
        resources = spec["linux"]["resources"]
        ex._create_cgroups(
            cid, memory_bytes, job.pids_limit, resources["cpu"]["quota"] / resources["cpu"]["period"]
        )
        return bundle

    async def start_restore(
        self, key: str, image: Path, job_dir: Path, cid: str, job: Any
    ) -> asyncio.subprocess.Process:
        """An attached ``runsc restore`` of ``image`` for one job (blocked on its stdin until ``go``)."""
        ex = self.executor
        memory = self.template_spec(key)["linux"]["resources"]["memory"]["limit"]
        bundle = await asyncio.to_thread(self.restore_bundle, key, job_dir, cid, memory, job)
        argv = [
            *ex._runsc_argv(None, "none"),
            "restore",
            "--image-path",
            str(image),
            "--bundle",
            str(bundle),
            cid,
        ]
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def go(self, process: asyncio.subprocess.Process, key: bytes, cid: str) -> None:
        """Send ``go <key>``; RestoreFailed unless the launcher confirms before any user code runs."""
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(b"go " + key + b"\n")
            await process.stdin.drain()
        process.stdin.close()
        line = await first_line(process, RESTORE_TIMEOUT_S)
        if line.strip() != GO_MARKER:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            detail = b""
            with contextlib.suppress(TimeoutError):
                detail = await asyncio.wait_for(process.stderr.read(), 2.0)
            raise RestoreFailed(f"restore {cid} failed: {line[:100]!r} {detail.strip()[-300:]!r}")


async def first_line(process: asyncio.subprocess.Process, timeout_s: float) -> bytes:
    """The first stdout line of a starting sandbox (b"" if none within ``timeout_s``)."""
    assert process.stdout is not None
    try:
        return await asyncio.wait_for(process.stdout.readline(), timeout_s)
    except TimeoutError:
        return b""


def launcher_args(preload: tuple[str, ...]) -> list[str]:
    return [oci.SANDBOX_PYTHON, "-I", "-S", "-c", LAUNCHER, BOOTSTRAP, ",".join(preload)]


def empty_job_dir(jobs_dir: Path, prefix: str = "snap-") -> Path:
    """A job directory with empty code/ and input/ (0755), bound by a sandbox before its job exists."""
    job_dir = Path(os.path.realpath(tempfile.mkdtemp(prefix=prefix, dir=jobs_dir)))
    for sub in ("code", "input"):
        (job_dir / sub).mkdir()
    for path in (job_dir, job_dir / "code", job_dir / "input"):
        path.chmod(0o755)
    return job_dir


def remove_restored(state_dir: Path, cid: str, dirs: list[Path]) -> bool:
    """Teardown of an attached restore that has exited: once its cgroups are empty (removed), its
    runsc state files are all that is left (``runsc delete -force`` would wait 1-1.8 s for a gofer
    that is gone). False when a cgroup could not be removed: the caller runs ``runsc delete``."""
    cgroups.remove_dirs(dirs)
    if any(d.exists() for d in dirs):
        return False
    for path in [*state_dir.glob(f"{cid}_sandbox:*"), state_dir / f"runsc-{cid}.sock"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return not runsc.has_state(state_dir, cid)
