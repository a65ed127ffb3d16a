"""The pure OCI spec builder (no runsc needed): every promise about the sandbox shape is in the spec."""

from __future__ import annotations

from typing import Any

from tako_shim.local import sandbox


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
    }
    fields.update(overrides)
    return sandbox.build_oci_spec(sandbox.SandboxSpec(**fields), host_dirs={"lib": "usr/lib", "opt2": None})


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
    for path in ("/usr", "/etc", "/runner", "/code", "/input", "/opt2"):
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


def test_install_sandbox_has_host_network_writable_deps_and_ca_certs() -> None:
    config = spec("install", deps_dir="/w/job/deps", host_ssl_dir="/etc/ssl", etc_dir="/w/etc-install")
    assert {"type": "network"} not in config["linux"]["namespaces"]  # runsc --network=host
    m = mounts(config)
    assert "rw" in m["/deps"]["options"]
    assert m["/etc/ssl"]["source"] == "/etc/ssl" and "ro" in m["/etc/ssl"]["options"]
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
