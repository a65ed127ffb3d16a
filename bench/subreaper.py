"""`python -m bench.subreaper CMD ARG...`: run CMD as a child of a child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``), so that every process CMD starts, however it daemonizes (podman's conmon,
runsc's sandbox, a backgrounded postgres), stays below this process: an orphan is reparented here, not
to init, and reaped here, so its CPU lands in this process's cutime/cstime. ``bench.proctree.tree_cpu``
of this pid is then the CPU of everything CMD ever started, dead or alive.

SIGINT and SIGTERM go to CMD; when CMD exits, the orphans left (e.g. a podman service CMD started) get
SIGTERM, then SIGKILL after 10 s, and are reaped. Exits with CMD's status."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(x) for x in handle.read().split()]
    except OSError:
        return []


def _reap_all() -> list[tuple[int, int]]:
    """Every child that has exited, without blocking."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def wrapper_script(directory: Path, python: str = sys.executable) -> Path:
    """An executable that runs ``python ARGS...`` under this subreaper (same pid as the wrapper: it
    execs), for code that starts a Python by path, e.g. ``tako_vm.testing.local_server(python=...)``."""
    script = directory / "python-subreaped"
    script.write_text(f'#!/bin/sh\nexec "{python}" "{Path(__file__).resolve()}" "{python}" "$@"\n')
    script.chmod(0o755)
    return script


@contextlib.contextmanager
def adopting_orphans(direct_comm: str = "runsc") -> Iterator[None]:
    """While the block runs this process is a child subreaper, and a thread reaps the orphans that
    reach it (runsc's gofer and stubs, command name ``exe``), so that ``RUSAGE_CHILDREN`` counts them.
    Children named ``direct_comm`` are this process's own ``subprocess`` calls and are left to them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    stop = threading.Event()

    def reap() -> None:
        while not stop.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None or _comm(info.si_pid) == direct_comm:
                stop.wait(0.005)  # nothing exited, or one of ours that its caller is about to reap
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    reaper = threading.Thread(target=reap, name="orphan-reaper", daemon=True)
    reaper.start()
    try:
        yield
    finally:
        time.sleep(0.5)  # the last sandboxes' stubs and gofers end just after their runsc
        stop.set()
        reaper.join()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split("(", 1)[1].rsplit(")", 1)[0]
    except (OSError, IndexError):
        return ""


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.subreaper CMD [ARG...]", file=sys.stderr)
        return 2
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    main_child = subprocess.Popen(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: os.kill(main_child.pid, signum))
    code = None
    while code is None:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid == main_child.pid:
            code = os.waitstatus_to_exitcode(status)
    me = os.getpid()
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _children(me):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _children(me) and time.monotonic() < deadline:
            _reap_all()
            time.sleep(0.05)
    _reap_all()
    return 0 if code is None else (code if code >= 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
