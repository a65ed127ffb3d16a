"""The permissive fallback: the runner with the host Python in a temp dir, rlimits only, NO isolation.

Used only when ``security_mode: permissive`` and runsc is unusable (``LocalExecutor`` logs a loud
warning at start-up and records ``runtime="none"``); never for untrusted code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tako_runner import runner as runner_module
from tako_runner.outcome import Outcome, classify, parse_envelope
from tako_shim.backends.local.sandbox import artifacts, oci
from tako_shim.backends.local.sandbox.job import EXTERNAL_DEADLINE_MARGIN_S, KILL_GRACE_S, SandboxJob
from tako_vm.models.runner import RunnerConfig

log = logging.getLogger(__name__)


def run_unsandboxed(job: SandboxJob, artifact_dir: Path, cancel: asyncio.Event) -> Outcome:
    """NO isolation: the runner with the host Python in a temp dir, rlimits only (permissive mode)."""
    log.warning("!!! running job %s WITHOUT a sandbox (security_mode=permissive, runsc unusable)", job.job_id)
    with tempfile.TemporaryDirectory(prefix="tako-unsandboxed-") as tmp:
        root = Path(tmp)
        for name in ("code", "input", "output", "tmp", "deps"):
            (root / name).mkdir()
        (root / "code" / "main.py").write_text(job.code, encoding="utf-8")
        (root / "input" / "data.json").write_text(json.dumps(job.input_data), encoding="utf-8")
        shutil.copyfile(runner_module.__file__, root / "runner.py")
        base = RunnerConfig(
            timeout=job.timeout,
            startup_timeout=job.startup_timeout,
            requirements=list(job.requirements),
            deps_dir=str(root / "deps"),
            code_path=str(root / "code" / "main.py"),
            input_path=str(root / "input" / "data.json"),
            output_dir=str(root / "output"),
            work_dir=str(root / "tmp"),
            python=_fallback_python(),
            max_stdout_bytes=job.max_stdout_bytes,
            max_stderr_bytes=job.max_stderr_bytes,
            max_artifact_bytes=job.max_artifact_bytes,
            max_total_artifact_bytes=job.max_total_artifact_bytes,
            max_artifact_count=job.max_artifact_count,
            kill_all_processes=False,
            kill_grace_seconds=KILL_GRACE_S,
            environment={
                **job.environment,
                "TAKO_INPUT_PATH": str(root / "input" / "data.json"),
                "TAKO_OUTPUT_DIR": str(root / "output"),
            },
        )
        (root / "code" / "job.json").write_text(base.job_json())
        if os.geteuid() == 0:  # never run user code as root, even without a sandbox
            for path in [root, *root.rglob("*")]:
                os.chown(path, oci.SANDBOX_UID, oci.SANDBOX_GID)
        install_env = None
        if job.requirements:
            install_env = _run_runner_on_host("install", root, job, job.startup_timeout, cancel)[0]
            if install_env is None or install_env.get("error"):
                return classify(
                    install_env, None, exit_code=1, oom_killed=False, deadline_exceeded=False,
                    cancelled=cancel.is_set(), runtime="none",
                )  # fmt: skip
        envelope, exit_code, late = _run_runner_on_host("run", root, job, job.timeout, cancel)
        outcome = classify(
            install_env, envelope, exit_code=exit_code, oom_killed=False, deadline_exceeded=late,
            cancelled=cancel.is_set(), runtime="none",
        )  # fmt: skip
        listed = (envelope or {}).get("artifacts")
        outcome.artifacts = []
        if isinstance(listed, list) and listed and not cancel.is_set():
            outcome.artifacts, refused = artifacts.ingest(listed, root / "output", artifact_dir, job)
            if refused:
                log.warning("job %s: artifacts refused: %s", job.job_id, "; ".join(refused[:10]))
        return outcome


def _run_runner_on_host(
    mode: str, root: Path, job: SandboxJob, seconds: int, cancel: asyncio.Event
) -> tuple[dict[str, Any] | None, int | None, bool]:
    memory = job.memory_limit_mb * oci.MIB

    def limits() -> None:
        for name, value in (("RLIMIT_AS", memory * 4), ("RLIMIT_FSIZE", job.max_total_artifact_bytes)):
            kind = getattr(resource, name)
            hard = resource.getrlimit(kind)[1]
            capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (capped, capped))

    argv = [
        _fallback_python(),
        "-I",
        str(root / "runner.py"),
        mode,
        "--config",
        str(root / "code" / "job.json"),
    ]
    as_nobody: dict[str, Any] = {}
    if os.geteuid() == 0:
        as_nobody = {"user": oci.SANDBOX_UID, "group": oci.SANDBOX_GID, "extra_groups": []}
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=limits, start_new_session=True, **as_nobody,
    )  # fmt: skip
    budget = time.monotonic() + seconds + KILL_GRACE_S + EXTERNAL_DEADLINE_MARGIN_S
    late = False
    while proc.poll() is None:
        if cancel.is_set() or time.monotonic() > budget:
            late = not cancel.is_set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            break
        time.sleep(0.05)
    stdout, _ = proc.communicate()
    envelope = parse_envelope(stdout.decode("utf-8", "replace"))
    return envelope, proc.returncode, late


def _fallback_python() -> str:
    """The sandboxes' interpreter when it exists (a venv under /root is not reachable as nobody)."""
    return oci.SANDBOX_PYTHON if os.path.exists(oci.SANDBOX_PYTHON) else sys.executable
