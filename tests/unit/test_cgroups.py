"""cgroup v1 / v2 / hybrid support of the local executor (shim/tako_shim/backends/local/sandbox/cgroups.py).

The pure parts (detection, the v2 plan, the files and values) are tested directly. The file-writing
logic runs against a temporary directory laid out like a real cgroupfs: it is a STAND-IN for the
kernel's files, because this host is cgroup v1 (hybrid) and the kernel's own v2 behaviour (EBUSY for
internal processes, moving a pid on a write to cgroup.procs, OOM kills) cannot be exercised here. The real
v2 proof runs in the fresh Debian 12 VM harness (docs/sandbox.md); the sandbox tier
(tests/sandbox/test_limits.py) proves the limits against the real kernel on this v1 host.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tako_shim.backends.local.sandbox import cgroups
from tako_shim.backends.local.sandbox.cgroups import CgroupsV1, CgroupsV2, CgroupUnavailable, Limits

V2_HOST = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID_HOST = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_HOST = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw shared:13 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw shared:17 - cgroup cgroup rw,pids
"""
LIMITS = Limits(memory_bytes=256 * 1024 * 1024, pids=1056, cpu=0.5)


def test_detection_of_v2_hybrid_v1_and_none() -> None:
    assert cgroups.detect_version(V2_HOST) == "v2"
    assert cgroups.detect_version(HYBRID_HOST) == "hybrid"
    assert cgroups.detect_version(V1_HOST) == "v1"
    assert cgroups.detect_version("22 28 0:21 / /sys rw - sysfs sysfs rw\n") == "none"
    # the last mount on a point wins (a cgroup2 over-mounted by a tmpfs is not v2)
    assert cgroups.detect_version(V2_HOST + "50 26 0:40 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n") == "none"


def test_detection_on_this_host_agrees_with_its_mounts() -> None:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    version = cgroups.detect_version(mountinfo)
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()  # only the unified root has this file
    assert (version == "v2") == unified
    if version in ("v1", "hybrid"):
        assert Path("/sys/fs/cgroup/memory").is_dir()


def test_own_cgroup_and_the_v2_plan() -> None:
    assert cgroups.own_cgroup_v2("0::/system.slice/tako-vm.service\n") == "/system.slice/tako-vm.service"
    assert cgroups.own_cgroup_v2("4:memory:/x\n0::/\n") == "/"
    with pytest.raises(CgroupUnavailable, match="no unified"):
        cgroups.own_cgroup_v2("4:memory:/x\n")
    # a systemd unit with Delegate=yes: its cgroup is the parent, the server moves into a leaf
    assert cgroups.plan_v2("/system.slice/tako-vm.service") == (
        "/system.slice/tako-vm.service",
        "/system.slice/tako-vm.service/server",
    )
    # already in the leaf (a second executor in the same process, a server started by a server)
    assert cgroups.plan_v2("/system.slice/x.scope/server") == (
        "/system.slice/x.scope",
        "/system.slice/x.scope/server",
    )
    # the root cgroup (no init system placed the server): a /tako-vm subtree, nobody moves
    assert cgroups.plan_v2("/") == ("/tako-vm", None)


def test_settings_v1_and_v2() -> None:
    v1 = cgroups.v1_settings(LIMITS)
    assert v1 == {
        "memory": {"memory.limit_in_bytes": str(256 * 1024 * 1024)},
        "pids": {"pids.max": "1056"},
        "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"},
    }
    v2 = cgroups.v2_settings(LIMITS, swap=True, oom_group=True)
    assert v2 == {
        "memory.max": str(256 * 1024 * 1024),
        "memory.swap.max": "0",
        "memory.oom.group": "1",
        "pids.max": "1056",
        "cpu.max": "50000 100000",
    }
    assert "memory.swap.max" not in cgroups.v2_settings(LIMITS, swap=False, oom_group=False)
    assert cgroups.v2_settings(Limits(1, 1, 0.001), swap=False, oom_group=False)["cpu.max"] == "1000 100000"


def test_oom_counters_of_both_versions() -> None:
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    v2 = "low 0\nhigh 0\nmax 31\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert cgroups.oom_kills(v1) == 2
    assert cgroups.oom_kills(v2) == 1
    assert cgroups.oom_kills("oom 3\noom_group_kill 1\n") == 0  # only oom_kill counts a kill
    assert cgroups.oom_kills("") == 0


# ------------------------------------------------------------------------- stand-in cgroupfs trees


def v2_tree(
    tmp_path: Path, own: str, *, procs: str, subtree: str = "", controllers: str = "cpu memory pids"
) -> Path:
    """A stand-in for a v2 mount: the root, and the server's own cgroup with its interface files."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    node = root / own.strip("/") if own != "/" else root
    node.mkdir(parents=True, exist_ok=True)
    if own != "/":
        (node / "cgroup.controllers").write_text(controllers + "\n")
        (node / "cgroup.subtree_control").write_text(subtree)
        (node / "cgroup.procs").write_text(procs)
        (node / "memory.swap.max").write_text("max\n")
        (node / "memory.oom.group").write_text("0\n")
    return root


def test_v2_setup_moves_the_server_into_a_leaf_and_enables_the_controllers(tmp_path: Path) -> None:
    own = "/system.slice/tako-vm.service"
    root = v2_tree(tmp_path, own, procs="4242\n")
    cg = CgroupsV2(own, root, pid=4242)
    cg.setup()
    service = root / "system.slice" / "tako-vm.service"
    assert (service / "server" / "cgroup.procs").read_text() == "4242"  # the kernel moves the process
    assert (service / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cg.swap and cg.oom_group

    cg.create("tako-c1-run-ab", LIMITS)
    sandbox = service / "tako-c1-run-ab"
    assert cg.oci_path("tako-c1-run-ab") == f"{own}/tako-c1-run-ab"
    assert cg.dirs("tako-c1-run-ab") == [sandbox]
    assert (sandbox / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (sandbox / "memory.swap.max").read_text() == "0"
    assert (sandbox / "memory.oom.group").read_text() == "1"
    assert (sandbox / "pids.max").read_text() == "1056"
    assert (sandbox / "cpu.max").read_text() == "50000 100000"

    assert not cg.oom_killed("tako-c1-run-ab")
    (sandbox / "memory.events").write_text(
        "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n"
    )  # what the kernel reports
    assert cg.oom_killed("tako-c1-run-ab")

    for name in list(sandbox.iterdir()):  # the kernel's rmdir removes the interface files with the dir
        name.unlink()
    cgroups.remove_dirs(cg.dirs("tako-c1-run-ab"), root)
    assert not sandbox.exists()


def test_v2_without_swap_accounting_writes_no_swap_file(tmp_path: Path) -> None:
    own = "/init.scope/x"
    root = v2_tree(tmp_path, own, procs="7\n", subtree="cpu memory pids")
    (root / "init.scope" / "x" / "memory.swap.max").unlink()
    cg = CgroupsV2(own, root, pid=7)
    cg.setup()
    assert (
        root / "init.scope" / "x" / "cgroup.subtree_control"
    ).read_text() == "cpu memory pids"  # untouched
    cg.create("c2", LIMITS)
    assert not (root / "init.scope" / "x" / "c2" / "memory.swap.max").exists()


def test_v2_names_the_missing_controller(tmp_path: Path) -> None:
    own = "/user.slice/user-0.slice/session-1.scope"
    root = v2_tree(tmp_path, own, procs="1\n", controllers="memory pids")
    with pytest.raises(CgroupUnavailable) as caught:
        CgroupsV2(own, root, pid=1).setup()
    message = str(caught.value)
    assert "controller(s) cpu not available" in message
    assert "Delegate=yes" in message and "\n" not in message


def test_v2_refuses_when_other_processes_share_the_servers_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel answers EBUSY to enabling controllers in a cgroup that still holds processes (here the
    stand-in raises it, as the kernel would with the shell that started the server still inside)."""
    own = "/user.slice/user-0.slice/session-1.scope"
    root = v2_tree(tmp_path, own, procs="811\n900\n")
    real_write = Path.write_text

    def kernel_write(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name == "cgroup.subtree_control" and data.startswith("+"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", kernel_write)
    with pytest.raises(CgroupUnavailable) as caught:
        CgroupsV2(own, root, pid=900).setup()
    assert "other processes (811, 900)" in str(caught.value)
    assert "systemd-run --scope -p Delegate=yes" in str(caught.value)


def test_v2_in_the_root_cgroup_uses_a_tako_vm_subtree(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/", procs="")
    (root / "cgroup.subtree_control").write_text("")
    (root / "tako-vm").mkdir()  # what the kernel shows in it once the root's subtree_control has them:
    (root / "tako-vm" / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = CgroupsV2("/", root, pid=1)
    cg.setup()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (root / "tako-vm" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert not (root / "tako-vm" / "server").exists()
    assert cg.oci_path("c3") == "/tako-vm/c3"


def test_v1_and_hybrid_write_each_controller(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpu"):
        (root / controller).mkdir(parents=True)
    cg = CgroupsV1(root, "hybrid")
    cg.setup()
    cg.create("c4", LIMITS)
    assert cg.oci_path("c4") == "/tako-vm/c4"
    assert (root / "memory" / "tako-vm" / "c4" / "memory.limit_in_bytes").read_text() == str(
        256 * 1024 * 1024
    )
    assert (root / "cpu" / "tako-vm" / "c4" / "cpu.cfs_quota_us").read_text() == "50000"
    assert (root / "pids" / "tako-vm" / "c4" / "pids.max").read_text() == "1056"
    (root / "memory" / "tako-vm" / "c4" / "memory.oom_control").write_text("oom_kill_disable 0\noom_kill 1\n")
    assert cg.oom_killed("c4")


def v1_tree(tmp_path: Path) -> Path:
    """A hybrid host's /sys/fs/cgroup: each hierarchy a directory with cgroup.procs; cpu and cpuacct
    symlinks to the joint cpu,cpuacct hierarchy; cgroup2 at unified; plus things that are no hierarchy."""
    root = tmp_path / "cgroup"
    for name in ("blkio", "cpu,cpuacct", "freezer", "memory", "pids", "systemd", "unified"):
        (root / name).mkdir(parents=True)
        (root / name / "cgroup.procs").write_text("")
    (root / "unified" / "cgroup.controllers").write_text("")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    (root / "not-mounted").mkdir()  # an empty mount point: no cgroup.procs
    (root / "README").write_text("")
    return root


def test_every_mounted_v1_hierarchy_is_listed_once(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    names = [h.name for h in cgroups.hierarchies(root)]
    assert names == ["blkio", "cpu", "freezer", "memory", "pids", "systemd", "unified"]
    assert cgroups.all_dirs("/tako-vm/c1", [root / "blkio", root / "systemd"]) == [
        root / "blkio" / "tako-vm" / "c1",
        root / "systemd" / "tako-vm" / "c1",
    ]


def test_v1_dirs_name_every_hierarchy_so_teardown_removes_what_a_restore_made(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    cg = CgroupsV1(root, "hybrid")
    dirs = cg.dirs("c5")
    assert dirs[:3] == [root / c / "tako-vm" / "c5" for c in ("memory", "pids", "cpu")]  # memory first
    assert [d.parent.parent.name for d in dirs[3:]] == ["blkio", "freezer", "systemd", "unified"]
    for path in dirs:  # what `runsc restore` leaves: the sandbox's cgroup in every hierarchy
        path.mkdir(parents=True)
    assert {os.path.realpath(p) for p in root.glob("*/tako-vm/c5")} == {os.path.realpath(p) for p in dirs}
    cgroups.remove_dirs(dirs, root)
    assert not list(root.glob("*/tako-vm/c5"))


def test_on_v2_the_one_unified_hierarchy_is_the_only_one(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/system.slice/tako-vm.service", procs="1\n")
    assert (root / "system.slice" / "tako-vm.service" / "cgroup.procs").is_file()
    assert cgroups.hierarchies(root) == [root]  # not its child cgroups
    path = "/system.slice/tako-vm.service/c6"
    assert cgroups.all_dirs(path, cgroups.hierarchies(root)) == [root / path.lstrip("/")]
    assert CgroupsV2("/system.slice/tako-vm.service", root).dirs("c6") == [root / path.lstrip("/")]


def test_v1_names_the_missing_controller(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    with pytest.raises(CgroupUnavailable, match=r"cgroup v1: no pids, cpu controller mounted"):
        CgroupsV1(root).setup()


def test_open_host_detects_from_mountinfo(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "/system.slice/a.service", procs="5\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(V2_HOST.replace("/sys/fs/cgroup", str(root)))
    proc = tmp_path / "cgroup-of-self"
    proc.write_text("0::/system.slice/a.service\n")
    found = cgroups.open_host(root, mountinfo, proc)
    assert found.version == "v2"
    assert found.oci_path("x") == "/system.slice/a.service/x"
    mountinfo.write_text("1 0 0:1 / / rw - ext4 /dev/sda rw\n")
    with pytest.raises(CgroupUnavailable, match="no cgroup filesystem"):
        cgroups.open_host(root, mountinfo, proc)


def test_removal_stays_under_the_cgroup_root(tmp_path: Path) -> None:
    outside = tmp_path / "not-a-cgroup"
    outside.mkdir()
    cgroups.remove_dirs([outside, tmp_path / "cgroup" / ".." / "not-a-cgroup"], tmp_path / "cgroup")
    assert outside.is_dir()


# ------------------------------------------------------------------------- the real kernel's cgroup2

UNIFIED = Path("/sys/fs/cgroup/unified")


def kernel_cgroup2() -> bool:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        return cgroups.detect_version(mountinfo, "/sys/fs/cgroup") == "hybrid" and UNIFIED.is_dir()
    except OSError:
        return False


@pytest.mark.skipif(
    os.geteuid() != 0 or not kernel_cgroup2(),
    reason="needs root and the hybrid host's cgroup2 at /sys/fs/cgroup/unified",
)
def test_v2_setup_against_the_kernels_cgroup2() -> None:
    """The closest this v1 host gets to v2: its real cgroup2 mount (systemd's hybrid layout) carries none of
    memory/pids/cpu (they are bound to v1), and enabling one would mean writing the hierarchy's root, which
    this test must not touch. What the kernel does show: a pid written into the leaf's cgroup.procs moves
    the process (the server leaves its cgroup for the `server` leaf), a second setup from inside the leaf
    reuses it, and a cgroup without the controllers is refused in one line that names them (the real
    kernel's empty cgroup.controllers). Only cgroups this test creates are touched; the process moved is
    its own `sleep` child."""
    base = UNIFIED / f"tako-test-{secrets.token_hex(4)}"
    server = subprocess.Popen(["sleep", "60"])
    made = [base / "server", base]
    try:
        base.mkdir()
        (base / "cgroup.procs").write_text(str(server.pid))  # "the server's own cgroup"
        cg = CgroupsV2(f"/{base.name}", UNIFIED, pid=server.pid)
        with pytest.raises(CgroupUnavailable) as caught:
            cg.setup()
        assert (base / "server" / "cgroup.procs").read_text().split() == [str(server.pid)]  # moved
        assert (base / "cgroup.procs").read_text() == ""
        assert Path(f"/proc/{server.pid}/cgroup").read_text().endswith(f"0::/{base.name}/server\n")
        message = str(caught.value)
        assert f"controller(s) memory, pids, cpu not available in {base}" in message and "\n" not in message
        again = CgroupsV2(f"/{base.name}/server", UNIFIED, pid=server.pid)
        assert (again.parent, again.leaf) == (f"/{base.name}", f"/{base.name}/server")
        with pytest.raises(CgroupUnavailable):
            again.setup()
        assert not (base / "server" / "server").exists()  # reused the leaf, no nesting
    finally:
        server.kill()
        server.wait()
        cgroups.remove_dirs(made, UNIFIED)
    assert not base.exists()
