"""One server per data dir: an exclusive ``flock`` on ``<data_dir>/server.lock``, which holds the pid.

A second server on the same data dir would take the first one's running sandboxes for leftovers of a
crash (and remove them), delete its warm pool and re-queue its running jobs from the shared SQLite
(double execution). So the lock is taken at start-up before anything under the data dir is touched,
and it is held for the life of the process: the kernel releases it when the process dies, however it
dies, so a crash never leaves a stale lock. The descriptor is not inherited by the sandboxes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "server.lock"
DATA_DIR_HINT = "choose another data dir with --data-dir, TAKO_VM_DATA_DIR or data_dir in tako_vm.yaml"


class DataDirLocked(Exception):
    """Another server holds the data dir; the one-line message names its pid and the data dir."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``DataDirLocked``; writes nothing but the lock file (and the data dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # no O_TRUNC: the pid is theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"the data dir {self.data_dir} is in use by another tako-vm server (pid {holder}); "
                f"{DATA_DIR_HINT}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
