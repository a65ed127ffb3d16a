"""Pure builders for the local gVisor sandboxes: the OCI runtime spec (config.json) of the install and
run sandboxes, the minimal /etc they see, and the host pids cap. No I/O here (cgroups: cgroups.py).

Shape of a sandbox (see docs/sandbox.md):
- an empty, read-only root whose /bin, /lib, /lib64, /sbin are symlinks into /usr (as in the system root);
- the /usr of the project's system root (``tako_shim.backends.local.rootfs``: Debian bookworm minbase
  with python3 and python3-pip, never the host's /usr) bound read-only, a generated minimal /etc bound
  read-only, the runner on /runner, code on /code and input on /input, all read-only;
- tmpfs /tmp with a size cap, a private /proc and /dev; /output of the run sandbox is a host directory
  (a tmpfs the executor mounts with the total artifact cap as its size, ``artifacts.py``) bound read-write,
  so the host reads the artifacts as files;
- uid/gid 65534 (nobody), no capabilities, no_new_privileges, rlimits for open files, processes and
  file size (never above the executor's own hard limits: root here lacks CAP_SYS_RESOURCE);
- its own network namespace with no interfaces (``--network=none``) for the run sandbox; the install
  sandbox uses the host network (``--network=host``) and writes the packages to /deps, which the run
  sandbox then binds read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SANDBOX_UID = 65534
SANDBOX_GID = 65534
SANDBOX_PYTHON = "/usr/bin/python3"
RUNNER_DIR = "/runner"
CONFIG_PATH = "/code/job.json"
MIB = 1024 * 1024

ETC_PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"
ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"
ETC_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
ETC_NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that varies between sandboxes; paths are host paths."""

    mode: str  # "install" | "run"
    rootfs: str
    etc_dir: str
    runner_dir: str
    code_dir: str
    input_dir: str
    deps_dir: str | None
    cgroup_path: str
    memory_limit_bytes: int
    pids_limit: int
    cpu_limit: float
    tmp_size_bytes: int
    output_size_bytes: int
    max_file_bytes: int
    open_files: int = 256
    host_hard_limits: dict[str, int] = field(
        default_factory=dict
    )  # RLIMIT name -> hard limit (-1 = unlimited)
    system_root: str = ""  # the project's root filesystem (rootfs.py); its /usr is bound at /usr
    system_dirs: tuple[str, ...] = ()  # real directories among its /bin, /lib, ... (bound like /usr)
    runner_entry: str = "runner.py"  # or its precompiled bytecode (relative to the runner directory)
    # The run sandbox's /output: a host directory (the executor's size-capped tmpfs, artifacts.py) bound
    # read-write, so artifacts leave the sandbox as files; None: a tmpfs of output_size_bytes inside it.
    output_dir: str | None = None


def rootfs_links(system_entries: dict[str, str | None]) -> dict[str, str | None]:
    """Which top-level entries of the empty root are symlinks: name -> link target, or None for a mount dir.

    ``system_entries`` maps /bin, /lib, ... to the system root's symlink target (None: a real directory).
    """
    wanted: dict[str, str | None] = {}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if name in system_entries:
            wanted[name] = system_entries[name]
    for name in ("usr", "etc", "proc", "dev", "tmp", "output", "code", "input", "runner", "deps", "sys"):
        wanted[name] = None
    return wanted


def _cap_rlimit(name: str, wanted: int, hard_limits: dict[str, int]) -> int:
    hard = hard_limits.get(name, -1)
    return wanted if hard < 0 else min(wanted, hard)


def _bind(source: str, destination: str, *, read_only: bool = True) -> dict[str, Any]:
    options = ["rbind", "nosuid", "nodev", "ro" if read_only else "rw"]
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def _tmpfs(destination: str, size_bytes: int, mode: str = "1777") -> dict[str, Any]:
    options = ["nosuid", "nodev", f"mode={mode}", f"size={size_bytes}"]
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": options}


def system_mounts(system_root: str, system_dirs: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read-only binds of the system root's /usr (and of any real /bin, /lib ... it has: a root without
    merged /usr). Never a host path: an empty ``system_root`` is refused rather than read as the host's /."""
    if not system_root.startswith("/") or system_root.rstrip("/") == "":
        raise ValueError(f"system_root must be an absolute path other than /, got {system_root!r}")
    root = system_root.rstrip("/")
    return [_bind(f"{root}/{name}", f"/{name}") for name in ("usr", *system_dirs)]


def build_oci_spec(spec: SandboxSpec) -> dict[str, Any]:
    """The OCI runtime spec for one sandbox (``runsc run`` reads it as bundle/config.json)."""
    install = spec.mode == "install"
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        _tmpfs("/dev", 64 * 1024, mode="755"),
        _tmpfs("/tmp", spec.tmp_size_bytes),
        *system_mounts(spec.system_root, spec.system_dirs),
    ]
    mounts.append(_bind(spec.etc_dir, "/etc"))
    mounts += [
        _bind(spec.runner_dir, RUNNER_DIR),
        _bind(spec.code_dir, "/code"),
        _bind(spec.input_dir, "/input"),
    ]
    if not install and spec.output_dir is not None:
        mounts.append(_bind(spec.output_dir, "/output", read_only=False))
    elif not install:
        mounts.append(_tmpfs("/output", spec.output_size_bytes))
    if spec.deps_dir is not None:
        mounts.append(_bind(spec.deps_dir, "/deps", read_only=not install))

    limits = spec.host_hard_limits
    rlimits = [
        {
            "type": "RLIMIT_NOFILE",
            "hard": (n := _cap_rlimit("RLIMIT_NOFILE", spec.open_files, limits)),
            "soft": n,
        },
        {
            "type": "RLIMIT_NPROC",
            "hard": (p := _cap_rlimit("RLIMIT_NPROC", spec.pids_limit, limits)),
            "soft": p,
        },
        {
            "type": "RLIMIT_FSIZE",
            "hard": (f := _cap_rlimit("RLIMIT_FSIZE", spec.max_file_bytes, limits)),
            "soft": f,
        },
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if not install:
        namespaces.append({"type": "network"})
    period = 100_000
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_GID},
            "args": [
                SANDBOX_PYTHON,
                "-I",
                "-S",  # no site: the stdlib-only runner needs no site-packages (.pth files cost start-up)
                f"{RUNNER_DIR}/{spec.runner_entry}",
                spec.mode,
                "--config",
                CONFIG_PATH,
                "--frame-key-stdin",  # the executor writes a per-sandbox key on stdin (docs/sandbox.md)
            ],
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp"],
            "cwd": "/tmp",
            "noNewPrivileges": True,
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
            "rlimits": rlimits,
        },
        "root": {"path": spec.rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": {
                "memory": {"limit": spec.memory_limit_bytes},
                "pids": {"limit": host_pids_limit(spec.pids_limit)},
                "cpu": {"quota": int(spec.cpu_limit * period), "period": period},
            },
            "cgroupsPath": spec.cgroup_path,
        },
    }


def host_pids_limit(pids_limit: int) -> int:
    """The host pids cgroup cap for one sandbox.

    Inside the sandbox, processes are limited by RLIMIT_NPROC (gVisor enforces it with a clean EAGAIN).
    On the host every sandboxed address space costs a systrap stub process and the Sentry has its own
    threads, so the host cap is a generous backstop that protects the machine, not the user-visible limit.
    """
    return max(512, 8 * pids_limit + 256)


def etc_files(*, with_resolv_conf: str | None) -> dict[str, str]:
    """The minimal /etc a sandbox sees (the host's /etc is never bound)."""
    files = {
        "passwd": ETC_PASSWD,
        "group": ETC_GROUP,
        "hosts": ETC_HOSTS,
        "nsswitch.conf": ETC_NSSWITCH,
    }
    if with_resolv_conf is not None:
        files["resolv.conf"] = with_resolv_conf
    return files
