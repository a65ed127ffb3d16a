"""The teardown journal: one file per sandbox not yet torn down (``work_dir/teardown/<cid>``), listing
its cgroup directories. Written before the sandbox's cgroups are created, removed once the container,
its cgroups and its job directory are gone; a restart reaps whatever the journal (or runsc's own state
directory) still names, wherever this server's cgroup was at the time (on v2 it can differ between runs).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


class TeardownJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(exist_ok=True)

    def record(self, cid: str, cgroup_dirs: list[Path]) -> None:
        (self.directory / cid).write_text(json.dumps([str(d) for d in cgroup_dirs]))

    def cgroup_dirs(self, cid: str) -> list[Path] | None:
        """The cgroup directories journalled for ``cid``; None when there is no (valid) entry."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            listed = json.loads((self.directory / cid).read_text() or "null")
            if isinstance(listed, list) and all(isinstance(d, str) for d in listed):
                return [Path(d) for d in listed]
        return None

    def forget(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / cid).unlink()

    def pending(self) -> set[str]:
        """Sandboxes whose teardown a crash interrupted."""
        return {p.name for p in self.directory.iterdir()}
