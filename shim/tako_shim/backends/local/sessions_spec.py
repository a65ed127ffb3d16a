"""Pure builders for a session's gVisor sandbox and its bookkeeping (no I/O; sessions.py does that).

A session sandbox is the job *run* sandbox of ``sandbox.build_oci_spec`` (read-only root, no network,
non-root, no capabilities, rlimits, cgroup limits, tmpfs /tmp) with three differences:
- PID 1 is the session runner (``tako_runner/session.py``) instead of the one-shot runner;
- the session channel is bound in: ``/session/in`` read-only (requests), ``/session/out`` writable
  (replies). Bind mounts are re-attached by ``runsc restore``, so the channel outlives a pause;
- /code and /input are empty (code arrives over the channel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tako_shim.backends.local.sandbox import oci as sandbox

SESSION_RUNNER = "session.py"
CHANNEL = "/session"
MAX_REPLY_BYTES_OVERHEAD = 256 * 1024
MAX_OUT_ENTRIES = 8  # more files in the reply directory than this is a session tampering with it


def session_oci_spec(
    base: sandbox.SandboxSpec, *, channel_in: str, channel_out: str, max_output: int
) -> dict[str, Any]:
    """The OCI spec of a session sandbox, from the job run sandbox's spec of the same limits."""
    if base.mode != "run":
        raise ValueError("a session sandbox derives from the run sandbox (no network), not " + base.mode)
    spec = sandbox.build_oci_spec(base)
    spec["process"]["args"] = [
        sandbox.SANDBOX_PYTHON,
        "-I",
        "-S",
        f"{sandbox.RUNNER_DIR}/{SESSION_RUNNER}",
        "--channel",
        CHANNEL,
        "--max-output",
        str(max_output),
    ]
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/output"]
    spec["mounts"] += [
        {"destination": f"{CHANNEL}/in", "type": "bind", "source": channel_in,
         "options": ["rbind", "nosuid", "nodev", "noexec", "ro"]},
        {"destination": f"{CHANNEL}/out", "type": "bind", "source": channel_out,
         "options": ["rbind", "nosuid", "nodev", "noexec", "rw"]},
    ]  # fmt: skip
    return spec


def container_id(session_id: str) -> str:
    return "tako-sess-" + re.sub(r"[^A-Za-z0-9_-]", "-", session_id)[:40]


@dataclass(frozen=True)
class Deadlines:
    """When a session must end: its TTL, and its idle timeout counted from the last activity."""

    expires_at: datetime
    idle_timeout_seconds: int

    def end_reason(self, now: datetime, last_activity: datetime, busy: bool) -> str | None:
        """``expired``, ``idle`` or None. A session running a call is never idle."""
        if now >= self.expires_at:
            return "expired"
        if not busy and now - last_activity >= timedelta(seconds=self.idle_timeout_seconds):
            return "idle"
        return None


def should_pause(now: datetime, last_activity: datetime, pause_after_seconds: int | None, busy: bool) -> bool:
    """Checkpoint a live, idle session to disk once it has been idle ``pause_after_seconds`` (None: never)."""
    return (
        pause_after_seconds is not None
        and not busy
        and now - last_activity >= timedelta(seconds=pause_after_seconds)
    )
