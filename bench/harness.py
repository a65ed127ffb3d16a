"""Shared plumbing: real tako-vm servers (``tako_vm.testing.local_server``), SDK clients, a bare
runsc baseline built from the very bundle the product uses, and a memory sampler."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tako_vm
from bench import subreaper
from bench.stats import rss_mib
from tako_vm.testing import LocalServer, local_server

REPO = Path(__file__).resolve().parents[1]
TOOLS_PATH = f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"
HOST_PYTHON = "/usr/bin/python3"  # in a sandbox the project root filesystem's; on the host, not a pyenv shim
CODE = "print(1)"

# Benchmarks measure the product, not the per-key rate limit.
BASE_SETTINGS: dict[str, Any] = {"api_rate_limit_enabled": False, "log_level": "WARNING"}


@contextlib.contextmanager
def server(root: Path, name: str, *, subreaped: bool = False, **settings: Any) -> Iterator[LocalServer]:
    """``subreaped``: the server runs under ``bench/subreaper.py`` (``srv.process`` is the subreaper),
    so ``tree_cpu`` of that pid counts what runsc leaves behind too (gofers, stubs)."""
    os.environ["PATH"] = TOOLS_PATH
    python = sys.executable
    if subreaped:
        (root / name).mkdir(parents=True, exist_ok=True)
        python = str(subreaper.wrapper_script(root / name))
    with local_server(
        root / name,
        {**BASE_SETTINGS, **settings},
        env={"PATH": TOOLS_PATH},
        startup_timeout=120,
        python=python,
    ) as srv:
        yield srv


def client(srv: LocalServer) -> tako_vm.Client:
    return tako_vm.Client(base_url=srv.url, timeout=120)


def sdk_round_trip(sdk: tako_vm.Client, code: str = CODE) -> float:
    """submit_code + long-poll get_result, as an agent's tool call does; seconds."""
    started = time.perf_counter()
    job_id = sdk.submit_code(code)
    record = sdk.get_result(job_id, timeout=120)
    elapsed = time.perf_counter() - started
    if record["status"] != "succeeded" or record["stdout"] != "1\n":
        raise RuntimeError(f"benchmark job did not succeed: {record}")
    return elapsed


def host_python_once(code: str = CODE) -> float:
    started = time.perf_counter()
    out = subprocess.run([HOST_PYTHON, "-c", code], capture_output=True, check=True)
    elapsed = time.perf_counter() - started
    if out.stdout != b"1\n":
        raise RuntimeError(f"host python printed {out.stdout!r}")
    return elapsed


class BareRunsc:
    """``runsc run`` of ``python3 -u /code/main.py`` in the same sandbox shape the product builds
    (same rootfs, mounts, limits, platform; no runner, no server). Only ``runsc run`` is timed:
    writing the bundle and deleting the container afterwards are not."""

    def __init__(self, work_dir: Path) -> None:
        from tako_shim.backends.local.sandbox.executor import LocalExecutor

        self.executor = LocalExecutor(work_dir=work_dir, security_mode="strict")

    def once(
        self,
        code: str = CODE,
        deps: Path | None = None,
        expect: bytes = b"1\n",
        args: list[str] | None = None,
    ) -> float:
        """One ``runsc run`` of ``code``; ``deps``: an installed requirement set bound at /deps (on
        PYTHONPATH, as the product does); ``args``: another process than ``python3 -u /code/main.py``."""
        from tako_shim.backends.local.sandbox.executor import SandboxJob

        ex = self.executor
        job_dir = Path(tempfile.mkdtemp(prefix="bare-", dir=ex._jobs_dir))
        cid = f"tako-bare-{secrets.token_hex(4)}"
        try:
            for sub in ("code", "input"):
                (job_dir / sub).mkdir()
                (job_dir / sub).chmod(0o755)
            job_dir.chmod(0o755)
            (job_dir / "code" / "main.py").write_text(code)
            bundle = ex._write_bundle(
                job_dir, "run", cid, deps, SandboxJob("bare", code, {}, [], 30, 60), None
            )
            spec = json.loads((bundle / "config.json").read_text())
            spec["process"]["args"] = args or [HOST_PYTHON, "-u", "/code/main.py"]
            if deps is not None:
                spec["process"]["env"].append("PYTHONPATH=/deps")
            (bundle / "config.json").write_text(json.dumps(spec))
            argv = [*ex._runsc_argv(None, "none"), "run", "--bundle", str(bundle), cid]
            started = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
            elapsed = time.perf_counter() - started
            if out.returncode != 0 or out.stdout != expect:
                raise RuntimeError(f"bare runsc: rc={out.returncode} {out.stdout!r} {out.stderr[-300:]!r}")
            return elapsed
        finally:
            ex._cleanup(None, cid, job_dir)


class MemorySampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mib(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def closed_loop(
    call: Callable[[int], Any], clients: int, warmup_s: float, window_s: float
) -> tuple[int, float, int]:
    """``clients`` threads loop ``call(i)`` (``i``: the thread's index): jobs finished inside the
    window, the window, all jobs."""
    done: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            call(i)
            with lock:
                done.append(time.perf_counter())

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(loop, i) for i in range(clients)]
        time.sleep(warmup_s)
        low = time.perf_counter()
        time.sleep(window_s)
        high = time.perf_counter()
        stop.set()
        for future in futures:
            future.result()
    return sum(1 for t in done if low <= t < high), high - low, len(done)
