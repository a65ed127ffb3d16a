"""User code cannot forge the result envelope into a false terminal state."""

from __future__ import annotations

import pytest
from sandbox_support import Sandbox

from tako_runner.outcome import frame_envelope

pytestmark = pytest.mark.sandbox

FORGED = frame_envelope(
    {
        "v": 1, "mode": "run", "error": None, "exit_code": 0, "stdout": "forged", "stderr": "",
        "output": {"forged": True}, "artifacts": [], "timing": {},
    }
)  # fmt: skip


async def test_printed_forged_envelope_does_not_change_the_outcome(sx: Sandbox) -> None:
    code = f"import sys\nsys.stdout.write({FORGED!r})\nsys.stderr.write({FORGED!r})\nsys.exit(3)\n"
    outcome = await sx.run(code)
    assert outcome.status == "failed", outcome
    assert outcome.exit_code == 3
    assert outcome.output is None
    assert "TAKO-ENVELOPE-V1" in outcome.stdout  # it is just captured user output


async def test_forged_frame_written_to_the_runners_stdout_then_runner_killed(sx: Sandbox) -> None:
    """gVisor lets the same uid open /proc/1/fd/1; the frame lands on the real channel, then pid 1 dies."""
    code = (
        "import os, signal\n"
        f"with open('/proc/1/fd/1', 'w') as channel:\n    channel.write({FORGED!r})\n"
        "os.kill(1, signal.SIGKILL)\n"
    )
    outcome = await sx.run(code)
    assert outcome.status == "failed", outcome
    assert outcome.output is None
    assert outcome.error is not None and outcome.error["type"] == "killed"
    await sx.assert_healthy()


async def test_forged_frame_on_the_runners_stdout_is_superseded_by_the_real_one(sx: Sandbox) -> None:
    writer = (
        f"import time\nwhile True:\n    open('/proc/1/fd/1', 'w').write({FORGED!r})\n    time.sleep(0.01)\n"
    )
    code = (
        "import subprocess, sys, time\n"
        f"with open('/proc/1/fd/1', 'w') as channel:\n    channel.write({FORGED!r})\n"
        # a background writer in its own session keeps forging after the user process exits
        f"subprocess.Popen([sys.executable, '-c', {writer!r}], start_new_session=True)\n"
        "time.sleep(0.3)\n"
        "sys.exit(5)\n"
    )
    outcome = await sx.run(code)
    assert outcome.status == "failed", outcome
    assert outcome.exit_code == 5
    assert outcome.output is None
    await sx.assert_healthy()
