"""Parse the runner's framed result envelope and classify a job's outcome (stdlib only, pure).

Used by the local executor (one or two runsc sandboxes) and by the operator (a Pod's container
statuses plus the envelopes found in its logs). Nothing here touches processes, files or the network.

Envelope frame (written by ``runner.py`` as the last thing on its stdout)::

    \\n
    TAKO-ENVELOPE-V1 <length> <sha256-hex>\\n
    <length bytes of ASCII JSON: one object, no newline>\\n
    TAKO-ENVELOPE-END\\n

The parser accepts a frame only when the header starts a line, the body has exactly ``length``
characters, its sha256 matches, the end marker follows, and the body is a JSON object with ``"v": 1``.
When a text holds several valid frames the LAST one wins: the runner prints its frame after every
other process in the sandbox has been killed, so nothing can be printed after it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

ENVELOPE_VERSION = 1
HEADER = "TAKO-ENVELOPE-V1"
END_MARKER = "TAKO-ENVELOPE-END"
MAC_MARKER = (
    "TAKO-ENVELOPE-MAC"  # the runner's own copies of these three are pinned by tests/unit/test_outcome.py
)
_HEADER_RE = re.compile(r"(?m)^" + HEADER + r" (\d{1,10}) ([0-9a-f]{64})\n")

TERMINAL_STATUSES = ("succeeded", "failed", "timeout", "oom", "cancelled")

# Exit codes of a process killed by a signal, as a shell reports them (128 + signal number).
_SIGNAL_EXIT_TYPES = {
    134: "abort",
    135: "bus_error",
    136: "arithmetic_error",
    137: "killed",
    139: "segfault",
    141: "pipe_error",
    143: "killed",
}

# The exception class named on the last traceback line -> error.type (contract names).
_EXCEPTION_TYPES = {
    "SyntaxError": "syntax_error",
    "IndentationError": "syntax_error",
    "TabError": "syntax_error",
    "ModuleNotFoundError": "import_error",
    "ImportError": "import_error",
    "NameError": "name_error",
    "UnboundLocalError": "name_error",
    "TypeError": "type_error",
    "ValueError": "value_error",
    "KeyError": "key_error",
    "IndexError": "index_error",
    "AttributeError": "attribute_error",
    "FileNotFoundError": "file_not_found",
    "IsADirectoryError": "file_error",
    "NotADirectoryError": "file_error",
    "FileExistsError": "file_error",
    "PermissionError": "permission",
    "RecursionError": "recursion_error",
    "AssertionError": "assertion_error",
    "ZeroDivisionError": "division_error",
    "OverflowError": "overflow_error",
    "UnicodeDecodeError": "encoding_error",
    "UnicodeEncodeError": "encoding_error",
    "UnicodeError": "encoding_error",
    "JSONDecodeError": "json_error",
    "ConnectionError": "network_error",
    "ConnectionRefusedError": "network_error",
    "ConnectionResetError": "network_error",
    "gaierror": "network_error",
    "URLError": "network_error",
    "TimeoutError": "network_timeout",
    "timeout": "network_timeout",
    "KeyboardInterrupt": "interrupted",
    "MemoryError": "oom",
    "OSError": "os_error",
}
_EXCEPTION_LINE_RE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)(?::\s?(.*))?$")
MAX_ERROR_MESSAGE = 4096


def frame_envelope(envelope: dict[str, Any]) -> str:
    """Return the framed text for one envelope (the runner prints exactly this)."""
    body = json.dumps(envelope, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    return f"\n{HEADER} {len(body)} {digest}\n{body}\n{END_MARKER}\n"


def parse_envelope(text: str) -> dict[str, Any] | None:
    """Return the last well-formed envelope in ``text``, or None when there is none."""
    found: dict[str, Any] | None = None
    for match in _HEADER_RE.finditer(text):
        # The body is one line (ASCII JSON has no raw newline), so only the line right after a header can
        # be its body: every line is examined at most once and crafted input parses in linear time.
        start = match.end()
        line_end = text.find("\n", start)
        if line_end - start != int(match.group(1)) or not text.startswith(END_MARKER, line_end + 1):
            continue
        body = text[start:line_end]
        try:
            raw = body.encode("ascii")
        except UnicodeEncodeError:
            continue
        if hashlib.sha256(raw).hexdigest() != match.group(2):
            continue
        try:
            value = json.loads(body)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("v") == ENVELOPE_VERSION:
            found = value
    return found


@dataclass
class Outcome:
    """The terminal record of one job, field for field the contract's execution record."""

    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    resource_usage: dict[str, Any] | None = None
    runtime: str | None = None

    @property
    def success(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _error(kind: str, message: str, phase: str | None) -> dict[str, Any]:
    return {"type": kind, "message": message[:MAX_ERROR_MESSAGE] or kind, "phase": phase}


def _last_exception_line(stderr: str) -> str | None:
    for line in reversed(stderr.rstrip().splitlines()):
        stripped = line.strip()
        if not stripped or stripped.startswith("[TRUNCATED"):
            continue
        return stripped if not line.startswith((" ", "\t")) else None
    return None


def classify_error(exit_code: int | None, stderr: str) -> tuple[str, str]:
    """Derive (error.type, message) for a failed user process from its exit code and stderr."""
    if exit_code in _SIGNAL_EXIT_TYPES:
        kind = _SIGNAL_EXIT_TYPES[exit_code]
        return kind, f"process ended by signal {exit_code - 128} (exit code {exit_code})"
    line = _last_exception_line(stderr)
    if line:
        match = _EXCEPTION_LINE_RE.match(line)
        if match and match.group(1) in _EXCEPTION_TYPES:
            return _EXCEPTION_TYPES[match.group(1)], line
        if match and match.group(1).endswith(("Error", "Exception")):
            return "runtime_error", line
    if exit_code is None:
        return "unknown", "no exit code"
    tail = stderr.strip()[-200:]
    return "runtime_error", tail or f"process exited with code {exit_code}"


def _merge_timing(install: dict[str, Any] | None, run: dict[str, Any] | None, phase: str) -> dict[str, Any]:
    install_timing = (install or {}).get("timing") or {}
    run_timing = (run or {}).get("timing") or {}
    dep_install_ms = int(install_timing.get("dep_install_ms") or 0)
    startup_ms = int(install_timing.get("total_ms") or 0) + int(run_timing.get("startup_ms") or 0)
    execution_ms = int(run_timing.get("execution_ms") or 0)
    total_ms = int(install_timing.get("total_ms") or 0) + int(run_timing.get("total_ms") or 0)
    return {
        "startup_ms": startup_ms,
        "dep_install_ms": dep_install_ms,
        "execution_ms": execution_ms,
        "total_ms": total_ms,
        "phase_at_exit": phase,
    }


def _public_artifacts(run: dict[str, Any] | None) -> list[dict[str, Any]]:
    keys = ("name", "size_bytes", "sha256", "content_type")
    return [{k: a.get(k) for k in keys} for a in (run or {}).get("artifacts") or []]


def classify(
    install_envelope: dict[str, Any] | None,
    run_envelope: dict[str, Any] | None,
    *,
    exit_code: int | None,
    oom_killed: bool,
    deadline_exceeded: bool,
    cancelled: bool,
    runtime: str | None,
) -> Outcome:
    """Combine what the sandbox(es) reported with what was observed from outside into one Outcome.

    ``install_envelope`` is None when there were no requirements (or the install sandbox produced no
    frame); ``exit_code`` is the exit code of the sandbox / container that ran the run phase (or of the
    install sandbox when the run never started); ``oom_killed`` comes from the memory cgroup or the
    container status; ``deadline_exceeded`` means the outside watchdog fired; ``cancelled`` a user cancel.
    A run envelope only counts when ``exit_code`` is 0 (or unknown): see the forgery note in docs/sandbox.md.
    Precedence: cancelled > oom > install failure > deadline > runner-reported result.
    """
    if run_envelope is not None and exit_code not in (0, None) and not oom_killed:
        # The runner exits 0 right after printing its frame. A frame from a sandbox / container that ended
        # otherwise was not printed by a runner that finished: user code can write to the runner's stdout
        # (/proc/1/fd/1 under gVisor) and then kill it, so such a frame is never trusted.
        run_envelope = None
    run = run_envelope or {}
    install_failed = bool(install_envelope and install_envelope.get("error"))
    install_done = install_envelope is not None and not install_failed
    phase = "execution" if run_envelope is not None or install_done else "startup"
    if install_envelope is None and run_envelope is None and not deadline_exceeded:
        phase = "startup"

    out = Outcome(
        status="failed",
        exit_code=run.get("exit_code"),
        stdout=run.get("stdout", "") or "",
        stderr=run.get("stderr", "") or "",
        stdout_truncated=bool(run.get("stdout_truncated")),
        stderr_truncated=bool(run.get("stderr_truncated")),
        output=run.get("output") if isinstance(run.get("output"), dict) else None,
        artifacts=_public_artifacts(run_envelope),
        resource_usage=run.get("resource_usage"),
        runtime=runtime,
    )
    if install_envelope is not None and run_envelope is None:
        out.stdout = install_envelope.get("stdout", "") or ""
        out.stderr = install_envelope.get("stderr", "") or ""
        out.stdout_truncated = bool(install_envelope.get("stdout_truncated"))
        out.stderr_truncated = bool(install_envelope.get("stderr_truncated"))

    def finish(status: str, error: dict[str, Any] | None, at: str) -> Outcome:
        out.status = status
        out.error = error
        out.timing = _merge_timing(install_envelope, run_envelope, at)
        return out

    if cancelled:
        return finish("cancelled", _error("cancelled", "Execution was cancelled by user", phase), phase)
    if oom_killed:
        return finish("oom", _error("oom", "Execution exceeded memory limit", phase), phase)
    if install_failed and install_envelope is not None:
        err = dict(install_envelope["error"])
        err.setdefault("phase", "startup")
        status = "timeout" if err.get("type") == "startup_timeout" else "failed"
        return finish(
            status, _error(err.get("type", "dependency_error"), err.get("message", ""), "startup"), "startup"
        )
    run_error = run.get("error")
    if deadline_exceeded and not (run_error and run_error.get("type") == "execution_timeout"):
        kind = "execution_timeout" if phase == "execution" else "startup_timeout"
        msg = f"job exceeded its {phase} deadline (enforced from outside the sandbox)"
        return finish("timeout", _error(kind, msg, phase), phase)
    if run_envelope is None:
        if exit_code in (137, -9):
            return finish(
                "failed", _error("killed", "sandbox was killed before it reported a result", phase), phase
            )
        msg = f"sandbox ended without a result envelope (exit code {exit_code})"
        return finish("failed", _error("internal_error", msg, phase), phase)
    if run_error:
        kind = run_error.get("type", "internal_error")
        at = run_error.get("phase") or "execution"
        status = "timeout" if kind in ("execution_timeout", "startup_timeout") else "failed"
        if kind == "oom":
            status = "oom"
        return finish(status, _error(kind, run_error.get("message", ""), at), at)
    user_exit = run.get("exit_code")
    if user_exit == 0:
        return finish("succeeded", None, "completed")
    kind, message = classify_error(user_exit, out.stderr)
    if kind == "oom":
        return finish("oom", _error("oom", message, "execution"), "execution")
    return finish("failed", _error(kind, message, "execution"), "execution")
