"""runsc process control: finding the binary, the global flags every call shares, reading its version,
killing and deleting containers, and reading a sandbox's pipes. Nothing here knows about jobs."""

from __future__ import annotations

import asyncio
import glob
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "Install gVisor's runsc with `bash scripts/install-system.sh` (puts the 2024 systrap build in "
    ".tools/bin/runsc) or `apt-get install runsc`, and make sure it is on PATH or pass runsc_path / set "
    "TAKO_VM_RUNSC. To run without a sandbox (NOT safe for untrusted code) set security_mode: permissive."
)
PLATFORMS = ("systrap", "ptrace")  # tried in this order at start-up; KVM hangs on nested VMs


def find_runsc(explicit: str | None) -> str | None:
    """An explicit path is authoritative; otherwise $TAKO_VM_RUNSC, the project's .tools/bin, PATH."""
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    candidates = [os.environ.get("TAKO_VM_RUNSC")]
    repo_tools = Path(__file__).resolve().parents[5] / ".tools" / "bin" / "runsc"
    candidates += [str(repo_tools), shutil.which("runsc"), "/usr/bin/runsc"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_version(runsc: str) -> tuple[str | None, str | None]:
    """(version, None) from ``runsc --version``, or (None, the reason it failed)."""
    try:
        out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{runsc} --version failed: {exc}"
    if out.returncode != 0:
        return None, f"{runsc} --version exited {out.returncode}: {out.stderr.strip()[:200]}"
    version = out.stdout.splitlines()[0].replace("runsc version ", "").strip() if out.stdout else None
    return version, None


def global_argv(runsc: str, state_dir: Path, platform: str, network: str) -> list[str]:
    """The flags every runsc call of this server shares (its own state root, no overlay)."""
    return [
        runsc,
        "--root", str(state_dir),
        f"--platform={platform}",
        f"--network={network}",
        "--overlay2=none",
    ]  # fmt: skip


def kill(argv: list[str], cid: str) -> None:
    """SIGKILL a container; ``argv`` is ``global_argv(...)``."""
    subprocess.run([*argv, "kill", cid, "KILL"], capture_output=True, timeout=30)


def has_state(state_dir: Path, cid: str) -> bool:
    """Whether runsc left state for ``cid`` (``runsc run`` removes it when the sandbox ends on its own)."""
    return any(state_dir.glob(f"{glob.escape(cid)}_*")) if state_dir.exists() else False


def delete(argv: list[str], cid: str) -> None:
    subprocess.run([*argv, "delete", "-force", cid], capture_output=True, timeout=30, check=False)


def containers_with_state(state_dir: Path) -> set[str]:
    """Container ids whose sandbox state is still in ``state_dir`` (left by a crashed server)."""
    return {p.name.split("_sandbox:")[0] for p in state_dir.glob("*_sandbox:*.state")}


def host_hard_limits() -> dict[str, int]:
    """The server's own hard rlimits: a sandbox never asks for more (root here lacks CAP_SYS_RESOURCE)."""
    limits = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_FSIZE"):
        hard = resource.getrlimit(getattr(resource, name))[1]
        limits[name] = -1 if hard == resource.RLIM_INFINITY else int(hard)
    return limits


async def pump(stream: asyncio.StreamReader, sink: Callable[[bytes], None]) -> None:
    while chunk := await stream.read(65536):
        sink(chunk)


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (readers cancelled at shutdown are not an error)."""
    if not future.cancelled():
        future.exception()
