"""The pure OCI spec builder (no runsc needed): every promise about the sandbox shape is in the spec."""

from __future__ import annotations

from typing import Any

import pytest

from tako_shim.backends.local.sandbox import oci as sandbox

SYSTEM_ROOT = "/var/cache/tako-vm/rootfs/0123456789abcdef"


def spec(mode: str = "run", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "mode": mode,
        "rootfs": "/w/rootfs",
        "etc_dir": "/w/etc-run",
        "runner_dir": "/w/runner",
        "code_dir": "/w/job/code",
        "input_dir": "/w/job/input",
        "deps_dir": None,
        "cgroup_path": "/tako-vm/c1",
        "memory_limit_bytes": 512 * sandbox.MIB,
        "pids_limit": 100,
        "cpu_limit": 1.5,
        "tmp_size_bytes": 64 * sandbox.MIB,
        "output_size_bytes": 51 * sandbox.MIB,
        "max_file_bytes": 65 * sandbox.MIB,
        "host_hard_limits": {"RLIMIT_NOFILE": 200, "RLIMIT_NPROC": -1, "RLIMIT_FSIZE": -1},
        "system_root": SYSTEM_ROOT,
    }
    fields.update(overrides)
    return sandbox.build_oci_spec(sandbox.SandboxSpec(**fields))


def mounts(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in config["mounts"]}


def test_run_sandbox_shape() -> None:
    config = spec()
    process = config["process"]
    assert config["root"] == {"path": "/w/rootfs", "readonly": True}
    assert process["user"] == {"uid": 65534, "gid": 65534}
    assert process["noNewPrivileges"] is True
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["args"] == [
        "/usr/bin/python3",
        "-I",
        "-S",
        "/runner/runner.py",
        "run",
        "--config",
        "/code/job.json",
        "--frame-key-stdin",
    ]
    assert {"type": "network"} in config["linux"]["namespaces"]
    m = mounts(config)
    for path in ("/usr", "/etc", "/runner", "/code", "/input"):
        assert m[path]["type"] == "bind" and "ro" in m[path]["options"], path
    assert "/lib" not in m  # a symlink into /usr in the root, not a mount
    assert m["/tmp"]["type"] == "tmpfs" and f"size={64 * sandbox.MIB}" in m["/tmp"]["options"]
    assert m["/output"]["type"] == "tmpfs" and f"size={51 * sandbox.MIB}" in m["/output"]["options"]
    assert "/deps" not in m and "/etc/ssl" not in m
    assert config["linux"]["resources"]["memory"]["limit"] == 512 * sandbox.MIB
    assert config["linux"]["resources"]["cpu"] == {"quota": 150_000, "period": 100_000}
    assert config["linux"]["cgroupsPath"] == "/tako-vm/c1"


def test_rlimits_never_exceed_the_hosts_hard_limits() -> None:
    limits = {r["type"]: r for r in spec(open_files=4096)["process"]["rlimits"]}
    assert limits["RLIMIT_NOFILE"] == {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 200}
    assert limits["RLIMIT_NPROC"]["hard"] == 100
    assert limits["RLIMIT_FSIZE"]["hard"] == 65 * sandbox.MIB
    assert limits["RLIMIT_CORE"]["hard"] == 0


def test_install_sandbox_has_host_network_writable_deps_and_its_own_etc() -> None:
    config = spec("install", deps_dir="/w/job/deps", etc_dir="/w/etc-install")
    assert {"type": "network"} not in config["linux"]["namespaces"]  # runsc --network=host
    m = mounts(config)
    assert "rw" in m["/deps"]["options"]
    assert m["/etc"]["source"] == "/w/etc-install"  # with resolv.conf and the CA bundle (copies)
    assert "/etc/ssl" not in m
    assert "/output" not in m
    assert config["process"]["args"][4] == "install"


def test_run_sandbox_with_requirements_binds_deps_read_only() -> None:
    m = mounts(spec(deps_dir="/w/job/deps"))
    assert "ro" in m["/deps"]["options"]


def test_host_pids_backstop() -> None:
    assert sandbox.host_pids_limit(100) >= 8 * 100
    assert sandbox.host_pids_limit(1) == 512  # never below the Sentry's own threads + systrap stubs


def test_etc_has_no_resolver_in_the_run_sandbox() -> None:
    assert "resolv.conf" not in sandbox.etc_files(with_resolv_conf=None)
    assert sandbox.etc_files(with_resolv_conf="nameserver 1.1.1.1\n")["resolv.conf"].startswith("nameserver")
    assert "nobody:x:65534" in sandbox.etc_files(with_resolv_conf=None)["passwd"]


def host_sources(config: dict[str, Any]) -> list[str]:
    """Bind sources that are host system directories (anything not under the test's own paths)."""
    ours = ("/w/", SYSTEM_ROOT + "/")
    return [m["source"] for m in config["mounts"] if m["type"] == "bind" and not m["source"].startswith(ours)]


@pytest.mark.parametrize("mode", ["run", "install"])
def test_system_directories_come_from_the_system_root_never_the_host(mode: str) -> None:
    config = spec(mode, deps_dir="/w/job/deps")
    m = mounts(config)
    assert m["/usr"]["source"] == f"{SYSTEM_ROOT}/usr"
    assert m["/usr"]["options"] == ["rbind", "nosuid", "nodev", "ro"]
    assert host_sources(config) == []  # no host /usr, /lib, /etc/ssl ...: every bind is ours
    assert config["root"]["readonly"] is True


def test_a_system_root_without_merged_usr_gets_its_real_directories_bound_read_only() -> None:
    m = mounts(spec(system_root=SYSTEM_ROOT + "/", system_dirs=("lib", "lib64")))
    for name in ("usr", "lib", "lib64"):
        assert m[f"/{name}"]["source"] == f"{SYSTEM_ROOT}/{name}" and "ro" in m[f"/{name}"]["options"]
    assert "/bin" not in m


@pytest.mark.parametrize("root", ["", "/", "//", "relative/rootfs"])
def test_a_missing_or_host_system_root_is_refused(root: str) -> None:
    with pytest.raises(ValueError, match="system_root must be an absolute path other than /"):
        spec(system_root=root)


def test_the_empty_root_links_follow_the_system_root() -> None:
    links = sandbox.rootfs_links({"bin": "usr/bin", "lib": "usr/lib", "lib64": None})
    assert links["bin"] == "usr/bin" and links["lib"] == "usr/lib"
    assert links["lib64"] is None and links["usr"] is None  # mount points
    assert "sbin" not in links  # the system root has none: no dangling link


def test_the_executors_run_sandbox_binds_its_host_output_directory_read_write() -> None:
    """Artifacts leave as files: /output is the host tmpfs the executor mounted (artifacts.py), bound rw."""
    m = mounts(spec(output_dir="/srv/jobs/j-1/output"))
    assert m["/output"] == {
        "destination": "/output",
        "type": "bind",
        "source": "/srv/jobs/j-1/output",
        "options": ["rbind", "nosuid", "nodev", "rw"],
    }
    assert "/output" not in mounts(spec("install", output_dir="/srv/jobs/j-1/output"))
