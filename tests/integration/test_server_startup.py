"""Start-up of `tako-vm server` as users run it: one server per data dir, and start-up errors that are one
line, a documented exit status (docs/cli.md) and touch nothing of another server.

The first server is real (strict mode, real runsc) and runs a real job while a second `tako-vm server`
process tries to start next to it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tako_vm
from tako_shim.backends.local.datadir import DataDirLock, DataDirLocked
from tako_shim.server import EXIT_DATA_DIR_LOCKED, EXIT_PORT, CannotListen, bind_sockets
from tako_vm.testing import LocalServer, free_port, local_server

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
needs_runsc = pytest.mark.skipif(
    shutil.which("runsc", path=RUNSC_PATH) is None,
    reason="runsc not installed (scripts/install-system.sh puts it in .tools/bin); strict mode needs it",
)
SLOW_JOB = "import time\ntime.sleep(12)\nprint('first server job done')\n"


# ------------------------------------------------------------------------------ in-process units


def test_the_data_dir_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire()
    try:
        assert (tmp_path / "data" / "server.lock").read_text().strip().isdigit()
        with pytest.raises(DataDirLocked) as caught:
            DataDirLock(tmp_path / "data").acquire()  # another open file: flock conflicts as across processes
        message = str(caught.value)
        assert f"(pid {(tmp_path / 'data' / 'server.lock').read_text().strip()})" in message
        assert str(tmp_path / "data") in message and "--data-dir" in message and "TAKO_VM_DATA_DIR" in message
        assert "\n" not in message
    finally:
        first.release()
    again = DataDirLock(tmp_path / "data")
    again.acquire()  # released: the next server takes it
    again.release()


def test_a_busy_port_is_one_line_naming_how_to_choose_another() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CannotListen) as caught:
            bind_sockets("127.0.0.1", port)
    assert f"port {port} on 127.0.0.1 is in use" in str(caught.value)
    assert "--port" in str(caught.value) and "make server PORT=" in str(caught.value)
    any_port = bind_sockets("127.0.0.1", 0)
    try:
        assert any_port[0].getsockname()[1] > 0
    finally:
        for sock in any_port:
            sock.close()


# ------------------------------------------------------------------------------ real processes


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    settings = {"security_mode": "strict", "max_workers": 2, "api_rate_limit_enabled": False}
    data = tmp_path_factory.mktemp("first-server")
    with local_server(data, settings, env={"PATH": RUNSC_PATH}, via_cli=True) as running:
        yield running


def second_server(first: LocalServer, *flags: str) -> subprocess.CompletedProcess[str]:
    """`tako-vm server` with the first server's configuration (so its data dir) and ``flags`` on top."""
    command = [sys.executable, "-m", "tako_vm.cli", "--config", str(first.config_path), "server", *flags]
    env = {"PATH": RUNSC_PATH, "HOME": str(first.data_dir)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def sandboxes_of(server: LocalServer) -> set[str]:
    """The server's job and warm-pool sandboxes; a template being built (``tako-tmpl-*``) is left out:
    its own server checkpoints and deletes it moments later."""
    state = server.data_dir / "state" / "work" / "runsc-state"
    names = {p.name.split("_sandbox:")[0] for p in state.glob("*_sandbox:*.state")}
    return {name for name in names if not name.startswith("tako-tmpl-")}


def wait_in_sandbox(client: tako_vm.Client, server: LocalServer, job_id: str) -> set[str]:
    """The first server's sandboxes (its warm pool's and the job's) once the job runs in one."""
    deadline = time.monotonic() + 60
    while client.get_status(job_id)["status"] != "running" or not sandboxes_of(server):
        assert time.monotonic() < deadline, "the first server's job never started"
        time.sleep(0.1)
    time.sleep(0.5)  # a cold sandbox's runsc state is written just after the job turns running
    return sandboxes_of(server)


@pytest.mark.sandbox
@needs_runsc
@pytest.mark.parametrize(
    ("flags", "status", "says"),
    [
        # another port, same data dir: the lock refuses, naming the holder
        ((), EXIT_DATA_DIR_LOCKED, "is in use by another tako-vm server (pid "),
        # the same port (and data dir): the port is checked before anything else
        (("--port", "SAME"), EXIT_PORT, "is in use (another server?)"),
    ],
)
def test_a_second_server_refuses_in_one_line_and_touches_nothing(
    first: LocalServer, flags: tuple[str, ...], status: int, says: str
) -> None:
    flags = tuple(str(first.port) if f == "SAME" else f for f in flags)
    if "--port" not in flags:
        flags = (*flags, "--port", str(free_port()))
    with tako_vm.Client(first.url) as client:
        job_id = client.submit_code(SLOW_JOB, timeout=60)
        before = wait_in_sandbox(client, first, job_id)

        second = second_server(first, *flags)

        assert second.returncode == status, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tako-vm server: ") and says in lines[0], second.stderr
        assert "Traceback" not in second.stderr and "listening" not in second.stderr
        if status == EXIT_DATA_DIR_LOCKED:
            assert f"(pid {first.process.pid})" in lines[0]
            assert str(first.data_dir / "state") in lines[0]
        assert before <= sandboxes_of(first)  # nothing of the first server was removed
        assert first.process.poll() is None
        record = client.get_result(job_id, timeout=120)
    assert record["status"] == "succeeded", record
    assert record["stdout"] == "first server job done\n"
    assert "removing stale sandbox" not in first.log()
