"""User code cannot forge the result envelope into a false terminal state."""

from __future__ import annotations

from typing import Any

import pytest
from sandbox_support import Sandbox

from tako_runner import runner
from tako_runner.outcome import frame_envelope
from tako_shim.backends.local.sandbox import frames, job

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


def written_then_killed(forged: str) -> str:
    """User code that writes ``forged`` to the runner's stdout, then kills the runner (pid 1)."""
    return (
        "import os, signal\n"
        f"with open('/proc/1/fd/1', 'w') as channel:\n    channel.write({forged!r})\n"
        "os.kill(1, signal.SIGKILL)\n"
    )


async def assert_written_then_killed_is_refused(sx: Sandbox, forged: str) -> None:
    """User code writes ``forged`` to the runner's stdout, then kills the runner: no forged result."""
    outcome = await sx.run(written_then_killed(forged))
    assert outcome.status == "failed", outcome
    assert outcome.output is None
    assert outcome.error is not None and outcome.error["type"] == "killed"


async def test_forged_frame_written_to_the_runners_stdout_then_runner_killed(sx: Sandbox) -> None:
    """gVisor lets the same uid open /proc/1/fd/1; the frame lands on the real channel, then pid 1 dies."""
    await assert_written_then_killed_is_refused(sx, FORGED)
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


async def test_forged_frame_with_guessed_mac_lines_then_runner_killed(sx: Sandbox) -> None:
    """The early result needs an HMAC keyed with a secret user code never sees: guessed keys fail."""
    for key in (b"", b"0" * 64, b"key"):
        await assert_written_then_killed_is_refused(sx, FORGED + runner.mac_line(key, FORGED))
    await assert_written_then_killed_is_refused(sx, FORGED + f"TAKO-ENVELOPE-MAC {len(FORGED)} {'0' * 64}\n")


async def test_a_flood_of_fake_mac_lines_still_ends_in_the_real_result(sx: Sandbox) -> None:
    """After MAX_MAC_CHECKS fake candidates the executor stops checking early and verifies the frame
    once the sandbox has exited: the real result still comes back."""
    fake = FORGED + f"TAKO-ENVELOPE-MAC {len(FORGED)} {'0' * 64}\n"
    lines = [
        "import time",
        f"for _ in range({frames.MAX_MAC_CHECKS * 5}):",
        f"    open('/proc/1/fd/1', 'w').write({fake!r})",
        "    time.sleep(0.02)",
        "print('real')",
    ]
    outcome = await sx.run("\n".join(lines))
    assert (outcome.status, outcome.stdout, outcome.output) == ("succeeded", "real\n", None), outcome


def record_frame_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The frame keys the host hands to sandboxes from now on, in order."""
    keys: list[bytes] = []
    original = job.FrameWatch.__init__

    def record(self: Any, key: bytes, buffer: Any) -> None:
        keys.append(key)
        original(self, key, buffer)

    monkeypatch.setattr(job.FrameWatch, "__init__", record)
    return keys


KEY_PROBE = (
    "import os\n"
    "def show(name, fn):\n"
    "    try:\n"
    "        print(name, repr(fn()))\n"
    "    except Exception as exc:\n"
    "        print(name, 'refused', type(exc).__name__)\n"
    "show('stdin', lambda: open('/proc/1/fd/0', 'rb').read(4096))\n"
    "show('environ', lambda: open('/proc/1/environ', 'rb').read())\n"
    "show('cmdline', lambda: open('/proc/1/cmdline', 'rb').read())\n"
    "show('mem', lambda: open('/proc/1/mem', 'rb').read(1))\n"
    "show('own env', lambda: dict(os.environ))\n"
    "show('code', lambda: {n: open('/code/' + n).read() for n in os.listdir('/code')})\n"
)


async def test_user_code_cannot_read_the_frame_key(sx: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is read from the runner's stdin before user code exists; user code looks everywhere it
    can (the runner's stdin, environment, command line and memory, its own environment, /code)."""
    keys = record_frame_keys(monkeypatch)
    outcome = await sx.run(KEY_PROBE)
    assert outcome.status == "succeeded", outcome
    assert len(keys) == 1 and len(keys[0]) == 64
    assert "mem refused PermissionError" in outcome.stdout
    assert "stdin b''" in outcome.stdout  # /dev/null by the time user code runs
    assert keys[0].decode() not in outcome.stdout + outcome.stderr
