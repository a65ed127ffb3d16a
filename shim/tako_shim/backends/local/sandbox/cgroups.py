"""Host cgroups of the local sandboxes, on cgroup v1, v2 (unified) and hybrid hosts.

The executor owns every sandbox's cgroup: it creates it with its limits before ``runsc run`` and
removes it after the sandbox is gone; runsc gets the path as the OCI ``linux.cgroupsPath``, finds it
existing and joins it without applying or deleting anything (so the OOM counter outlives the sandbox).
The same code path serves both versions; only the files differ:

=============  ==============================================  =========================================
               v1 (and hybrid: v1 controllers + cgroup2 at     v2 (unified: cgroup2 at /sys/fs/cgroup)
               /sys/fs/cgroup/unified without them)
=============  ==============================================  =========================================
sandbox dir    ``/sys/fs/cgroup/{memory,pids,cpu}/tako-vm/ID``  ``/sys/fs/cgroup/<delegated>/ID``
memory         ``memory.limit_in_bytes``                        ``memory.max``, ``memory.swap.max`` 0,
                                                                ``memory.oom.group`` 1 (where they exist)
pids           ``pids.max``                                     ``pids.max``
cpu            ``cpu.cfs_period_us`` + ``cpu.cfs_quota_us``     ``cpu.max`` = "quota period"
OOM            ``memory.oom_control`` ``oom_kill``              ``memory.events`` ``oom_kill``
=============  ==============================================  =========================================

On v2 the sandboxes live in a *delegated* subtree: the server's own cgroup (from /proc/self/cgroup;
under systemd the unit's cgroup with ``Delegate=yes``, see packaging/systemd/tako-vm.service). The
"no internal processes" rule forbids enabling controllers for the children of a cgroup that holds
processes, so the server first moves itself into a ``server`` leaf, then writes
``+memory +pids +cpu`` into the delegated cgroup's ``cgroup.subtree_control``. A server that runs in
the root cgroup (no init system placed it anywhere) uses ``/tako-vm`` instead and does not move.

The pure parts (detection from mountinfo, the v2 plan, the files and values to write, parsing the OOM
counters) are functions; ``CgroupsV1``/``CgroupsV2`` only add the file I/O, under a root directory
that tests replace with a temporary stand-in for the kernel's files.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
V1_PARENT = "tako-vm"  # /sys/fs/cgroup/<controller>/tako-vm/<id>
V2_ROOT_PARENT = "/tako-vm"  # v2, for a server in the root cgroup
SERVER_LEAF = "server"  # v2: the leaf the server moves itself into
CPU_PERIOD_US = 100_000
DELEGATION_HINT = (
    "run the server in a cgroup of its own with the controllers delegated: under systemd use the "
    "shipped unit (packaging/systemd/tako-vm.service, Delegate=yes) or "
    "`systemd-run --scope -p Delegate=yes tako-vm server` (what `make server` does); see docs/sandbox.md"
)


class CgroupUnavailable(Exception):
    """No usable cgroup controller for the sandboxes; the one-line message names what is missing."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int  # the host cap (sandbox.host_pids_limit), not the user-visible RLIMIT_NPROC
    cpu: float  # CPUs


# ---------------------------------------------------------------------------------------- pure parts


def mounts(mountinfo: str) -> dict[str, str]:
    """Mount point -> filesystem type from /proc/self/mountinfo (the last mount on a point wins)."""
    found: dict[str, str] = {}
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if not sep or len(fields) < 5 or not after.split():
            continue
        found[fields[4].replace("\\040", " ")] = after.split()[0]
    return found


def detect_version(mountinfo: str, root: str = str(CGROUP_ROOT)) -> str:
    """``v2`` (cgroup2 mounted at the root: what ``stat -f /sys/fs/cgroup`` reports as cgroup2fs),
    ``hybrid`` (v1 controllers plus a cgroup2 at ``root/unified``), ``v1``, or ``none``."""
    table = mounts(mountinfo)
    if table.get(root) == "cgroup2":
        return "v2"
    if any(fstype == "cgroup" and point.startswith(root + "/") for point, fstype in table.items()):
        return "hybrid" if table.get(root + "/unified") == "cgroup2" else "v1"
    return "none"


def own_cgroup_v2(proc_self_cgroup: str) -> str:
    """The unified-hierarchy path of a process (the ``0::/path`` line of /proc/PID/cgroup)."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    raise CgroupUnavailable("cgroup v2: /proc/self/cgroup has no unified (0::) entry")


def plan_v2(own: str) -> tuple[str, str | None]:
    """Where the sandboxes go on v2, given the server's own cgroup: (delegated parent, server leaf).

    In the root cgroup, processes may sit next to child cgroups: ``/tako-vm``, no move. Elsewhere the
    server's own cgroup is the delegated parent and the server moves into its ``server`` leaf; a server
    already in such a leaf (a restart in the same process, a server started by another one) reuses it.
    """
    own = "/" + own.strip("/")
    if own == "/":
        return V2_ROOT_PARENT, None
    if own.rsplit("/", 1)[-1] == SERVER_LEAF and own.count("/") > 1:
        return own.rsplit("/", 1)[0], own
    return own, f"{own}/{SERVER_LEAF}"


def v1_settings(limits: Limits) -> dict[str, dict[str, str]]:
    """The files to write in a sandbox's cgroup v1 directories: controller -> {file: value}."""
    return {
        "memory": {"memory.limit_in_bytes": str(limits.memory_bytes)},
        "pids": {"pids.max": str(limits.pids)},
        "cpu": {
            "cpu.cfs_period_us": str(CPU_PERIOD_US),
            "cpu.cfs_quota_us": str(cpu_quota_us(limits.cpu)),
        },
    }


def v2_settings(limits: Limits, *, swap: bool, oom_group: bool) -> dict[str, str]:
    """The files to write in a sandbox's cgroup v2 directory, in order. ``swap``: the kernel accounts
    swap (``memory.swap.max`` exists): no swap at all, as v1 without memsw gives none to a full
    cgroup. ``oom_group``: an OOM kill takes the whole sandbox (Sentry and gofer) at once."""
    files = {"memory.max": str(limits.memory_bytes)}
    if swap:
        files["memory.swap.max"] = "0"
    if oom_group:
        files["memory.oom.group"] = "1"
    files["pids.max"] = str(limits.pids)
    files["cpu.max"] = f"{cpu_quota_us(limits.cpu)} {CPU_PERIOD_US}"
    return files


def cpu_quota_us(cpu: float) -> int:
    return max(1000, int(cpu * CPU_PERIOD_US))


def oom_kills(flat_keyed: str) -> int:
    """The ``oom_kill`` count of ``memory.oom_control`` (v1) or ``memory.events`` (v2)."""
    for line in flat_keyed.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return 0


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """The mounted cgroup hierarchies under ``root``: ``[root]`` on v2 (one unified hierarchy), else every
    directory below it that is a cgroup (has ``cgroup.procs``: each v1 controller or named hierarchy,
    and hybrid's cgroup2 at ``unified``), once each (``cpu`` and ``cpu,cpuacct`` symlinks: one)."""
    if (root / "cgroup.controllers").is_file():
        return [root]
    found: dict[str, Path] = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if (entry / "cgroup.procs").is_file():
            found.setdefault(os.path.realpath(entry), entry)
    return list(found.values())


def all_dirs(cgroup_path: str, hierarchy_roots: list[Path]) -> list[Path]:
    """The directory of the cgroup ``cgroup_path`` (an OCI ``linux.cgroupsPath``) in every hierarchy.

    ``runsc restore`` (unlike ``runsc run``, which removes what it made) creates a sandbox's cgroup in
    *every* mounted v1 hierarchy (blkio, cpuset, devices, freezer, name=systemd ...), not only in the
    memory/pids/cpu ones the executor creates: teardown must remove them all."""
    relative = cgroup_path.strip("/")
    return [hierarchy / relative for hierarchy in hierarchy_roots]


def missing_controllers(available: str, wanted: tuple[str, ...] = CONTROLLERS) -> list[str]:
    """The wanted controllers absent from a ``cgroup.controllers``/``cgroup.subtree_control`` line."""
    have = set(available.split())
    return [name for name in wanted if name not in have]


# ---------------------------------------------------------------------------------------- file I/O


class Cgroups(Protocol):
    version: str  # "v1", "hybrid" or "v2"

    def setup(self) -> None:
        """Check (v1) or prepare (v2) the parent of the sandboxes' cgroups; ``CgroupUnavailable``."""

    def oci_path(self, cid: str) -> str:
        """The OCI ``linux.cgroupsPath`` of a sandbox (absolute, from the cgroup mount's root)."""

    def dirs(self, cid: str) -> list[Path]:
        """Every directory the sandbox's cgroup consists of (one per mounted hierarchy on v1)."""

    def create(self, cid: str, limits: Limits) -> None:
        """Create the sandbox's cgroup directories with their limits."""

    def oom_killed(self, cid: str) -> bool:
        """Whether the kernel OOM-killed anything in the sandbox's memory cgroup."""

    def describe(self) -> str:
        """One line for the log: the version and where the sandboxes' cgroups go."""


def remove_dirs(dirs: list[Path], root: Path = CGROUP_ROOT) -> None:
    """Remove cgroup directories (deepest first); only under ``root``. A cgroup whose last process is
    still exiting is busy for a moment, so each removal is retried for up to a second."""
    root = Path(os.path.abspath(root))
    for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        path = Path(os.path.abspath(path))
        if root not in path.parents:
            continue
        for _ in range(50):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class CgroupsV1:
    """cgroup v1 (and hybrid hosts, whose memory/pids/cpu controllers are v1 hierarchies)."""

    def __init__(self, root: Path = CGROUP_ROOT, version: str = "v1") -> None:
        self.root = root
        self.version = version

    def setup(self) -> None:
        missing = [c for c in CONTROLLERS if not (self.root / c).is_dir()]
        if missing:
            where = ", ".join(str(self.root / c) for c in missing)
            raise CgroupUnavailable(
                f"cgroup {self.version}: no {', '.join(missing)} controller mounted ({where} missing)"
            )

    def oci_path(self, cid: str) -> str:
        return f"/{V1_PARENT}/{cid}"

    @functools.cached_property
    def _hierarchies(self) -> list[Path]:
        return hierarchies(self.root)  # mounted once, at boot: read once

    def dirs(self, cid: str) -> list[Path]:
        """memory, pids and cpu first (what ``create`` makes), then every other hierarchy's directory
        (what a ``runsc restore`` creates)."""
        mine = {os.path.realpath(self.root / c) for c in CONTROLLERS}
        others = [h for h in self._hierarchies if os.path.realpath(h) not in mine]
        return [self.root / c / V1_PARENT / cid for c in CONTROLLERS] + all_dirs(self.oci_path(cid), others)

    def create(self, cid: str, limits: Limits) -> None:
        settings = v1_settings(limits)
        for controller in CONTROLLERS:
            path = self.root / controller / V1_PARENT / cid
            path.mkdir(parents=True, exist_ok=True)
            for name, value in settings[controller].items():
                (path / name).write_text(value)

    def oom_killed(self, cid: str) -> bool:
        return oom_kills(_read(self.root / "memory" / V1_PARENT / cid / "memory.oom_control")) > 0

    def describe(self) -> str:
        return f"cgroup {self.version}: sandboxes in {self.root}/{{{','.join(CONTROLLERS)}}}/{V1_PARENT}/<id>"


class CgroupsV2:
    """cgroup v2: the sandboxes are children of the server's delegated cgroup (see the module doc)."""

    version = "v2"

    def __init__(
        self,
        own: str,
        root: Path = CGROUP_ROOT,
        pid: int | None = None,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> None:
        self.root = root
        self.own = own
        self.controllers = controllers
        self.pid = os.getpid() if pid is None else pid
        self.parent, self.leaf = plan_v2(own)
        self.swap = False
        self.oom_group = False

    def _path(self, cgroup: str) -> Path:
        return self.root / cgroup.strip("/")

    def setup(self) -> None:
        parent = self._path(self.parent)
        if self.leaf is None:  # the root cgroup: enable the controllers for /tako-vm there first
            self._enable(self.root, "/")
        try:
            parent.mkdir(exist_ok=True)
            if self.leaf is not None and "/" + self.own.strip("/") != self.leaf:
                leaf = self._path(self.leaf)
                leaf.mkdir(exist_ok=True)
                (leaf / "cgroup.procs").write_text(str(self.pid))  # the whole process, every thread
        except OSError as exc:
            raise CgroupUnavailable(
                f"cgroup v2: cannot prepare {parent} ({exc.strerror or exc}); {DELEGATION_HINT}"
            ) from None
        self._enable(parent, self.parent)
        self.swap = (parent / "memory.swap.max").exists()
        self.oom_group = (parent / "memory.oom.group").exists()

    def _enable(self, path: Path, name: str) -> None:
        """Enable the controllers (memory, pids, cpu) for the children of ``path`` (a no-op where they
        already are)."""
        available = _read(path / "cgroup.controllers")
        missing = missing_controllers(available, self.controllers)
        if missing:
            raise CgroupUnavailable(
                f"cgroup v2: controller(s) {', '.join(missing)} not available in {path} (cgroup.controllers: "
                f"{available.strip() or 'empty'!r}); {DELEGATION_HINT}"
            )
        todo = missing_controllers(_read(path / "cgroup.subtree_control"), self.controllers)
        if not todo:
            return
        try:
            (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in todo))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                others = _read(path / "cgroup.procs").split()
                raise CgroupUnavailable(
                    f"cgroup v2: cannot enable {', '.join(todo)} for the children of {name}: it still holds "
                    f"other processes ({', '.join(others[:5]) or 'threads'}); {DELEGATION_HINT}"
                ) from None
            raise CgroupUnavailable(
                f"cgroup v2: cannot enable {', '.join(todo)} in {path}/cgroup.subtree_control "
                f"({exc.strerror or exc}); {DELEGATION_HINT}"
            ) from None

    def oci_path(self, cid: str) -> str:
        return f"{self.parent.rstrip('/')}/{cid}"

    def dirs(self, cid: str) -> list[Path]:
        return [self._path(self.oci_path(cid))]

    def create(self, cid: str, limits: Limits) -> None:
        path = self._path(self.oci_path(cid))
        path.mkdir(exist_ok=True)
        for name, value in v2_settings(limits, swap=self.swap, oom_group=self.oom_group).items():
            (path / name).write_text(value)

    def oom_killed(self, cid: str) -> bool:
        return oom_kills(_read(self._path(self.oci_path(cid)) / "memory.events")) > 0

    def describe(self) -> str:
        return (
            f"cgroup v2: sandboxes in {self._path(self.parent)}/<id>, the server in {self.leaf or self.own}"
        )


def open_host(
    root: Path = CGROUP_ROOT,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> Cgroups:
    """Detect the host's cgroup version and prepare the sandboxes' parent; ``CgroupUnavailable``."""
    version = detect_version(_read(mountinfo), str(root))
    cgroups: Cgroups
    if version == "v2":
        cgroups = CgroupsV2(own_cgroup_v2(_read(proc_cgroup)), root)
    elif version in ("v1", "hybrid"):
        cgroups = CgroupsV1(root, version)
    else:
        raise CgroupUnavailable(f"no cgroup filesystem is mounted at {root} (neither v1 nor v2)")
    cgroups.setup()
    return cgroups
