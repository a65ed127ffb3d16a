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
import time

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
