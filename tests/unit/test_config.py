"""Configuration: tako_vm.yaml + TAKO_VM_* overrides, validated at start-up with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako_shim import config
from tako_shim.config import GIB, ConfigError, Settings, load_settings


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tako_vm.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    settings = load_settings(None, env={}, overrides={"data_dir": str(tmp_path)})
    assert (
        settings.max_workers,
        settings.max_queue_size,
        settings.default_timeout,
        settings.max_timeout,
    ) == (
        config.machine_max_workers(),  # derived from the machine (see the max_workers tests below)
        100,
        30,
        300,
    )
    assert settings.server_host == "127.0.0.1" and settings.security_mode == "strict"
    assert settings.api_max_payload_bytes == 2 * 1024 * 1024
    assert (settings.api_rate_limit_requests, settings.api_rate_limit_window_seconds) == (120, 60)
    assert settings.allow_runtime_requirements and settings.backend == "local"  # loopback: on


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, True),  # 127.0.0.1: a developer's own machine
        ({"server_host": "::1"}, True),
        ({"production_mode": True}, False),
        ({"server_host": "0.0.0.0", "allow_unauthenticated_network_access": True}, False),
        ({"allow_runtime_requirements": False}, False),  # an explicit choice always wins
        (
            {
                "server_host": "0.0.0.0",
                "allow_unauthenticated_network_access": True,
                "allow_runtime_requirements": True,
            },
            True,
        ),
    ],
)
def test_runtime_requirements_default_on_only_for_a_loopback_development_server(
    raw: dict[str, object], expected: bool, tmp_path: Path
) -> None:
    assert Settings.model_validate(raw).allow_runtime_requirements is expected
    env = {f"TAKO_VM_{key.upper()}": str(value) for key, value in raw.items()}
    assert load_settings(write(tmp_path, "{}\n"), env=env).allow_runtime_requirements is expected
    unset = write(tmp_path, "allow_runtime_requirements:\n")  # the shipped tako_vm.yaml leaves it empty
    assert load_settings(unset, env=env).allow_runtime_requirements is expected


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, "max_workers: 2\nmax_queue_size: 7\nkubernetes:\n  namespace: from-file\n")
    env = {
        "TAKO_VM_MAX_WORKERS": "6",
        "TAKO_VM_ALLOW_RUNTIME_REQUIREMENTS": "yes",
        "TAKO_VM_KUBERNETES__IN_CLUSTER": "1",
    }
    settings = load_settings(path, env=env, overrides={"server_port": 9999})
    assert settings.max_workers == 6 and settings.max_queue_size == 7
    assert settings.allow_runtime_requirements is True
    assert settings.kubernetes.namespace == "from-file" and settings.kubernetes.in_cluster is True
    assert settings.server_port == 9999


def test_config_file_found_through_tako_vm_config(tmp_path: Path) -> None:
    path = write(tmp_path, "max_queue_size: 3\n")
    assert load_settings(None, env={"TAKO_VM_CONFIG": path}).max_queue_size == 3


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("max_workers: 0\n", {}, "max_workers"),
        ("bogus_key: 1\n", {}, "bogus_key: unknown key"),
        ("", {"TAKO_VM_MAX_QUEUE_SIZE": "lots"}, "max_queue_size"),
        ("security_mode: lax\n", {}, "security_mode"),
        ("default_timeout: 400\n", {}, "default_timeout"),
        ("job_types:\n  - name: big\n    timeout: 900\n", {}, "job_types.big.timeout"),
        ("job_types:\n  - name: 'bad name'\n", {}, "job_types.0.name"),
        ("api_auth_enabled: true\n", {}, "api_keys"),
        ("api_keys: ['short']\n", {}, "api_keys"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env=env)
    assert key in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "max_workers: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(path, env={})


def test_non_loopback_bind_without_auth_is_refused() -> None:
    with pytest.raises(ConfigError, match="server_host: refusing to bind non-loopback"):
        load_settings(None, env={"TAKO_VM_SERVER_HOST": "0.0.0.0"})
    authed = load_settings(
        None,
        env={
            "TAKO_VM_SERVER_HOST": "0.0.0.0",
            "TAKO_VM_API_AUTH_ENABLED": "true",
            "TAKO_VM_API_KEYS": "k-0123456789abcdef",
        },
    )
    assert authed.server_host == "0.0.0.0"
    assert load_settings(None, env={}, overrides={"server_host": "::1"}).server_host == "::1"


def test_api_keys_map_to_tenants() -> None:
    plain = Settings(api_keys=["k-0123456789abcdef"])  # type: ignore[arg-type]
    assert plain.api_keys == {"k-0123456789abcdef": "default"}
    from_env = load_settings(None, env={"TAKO_VM_API_KEYS": "k-aaaaaaaaaaaaaaaa=team-a,k-cccccccccccccccc"})
    assert from_env.api_keys == {"k-aaaaaaaaaaaaaaaa": "team-a", "k-cccccccccccccccc": "default"}
    with pytest.raises(ConfigError, match="DNS label"):
        load_settings(None, env={"TAKO_VM_API_KEYS": "k-aaaaaaaaaaaaaaaa=Team_A"})


def test_the_example_config_at_the_repo_root_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(str(root / "tako_vm.yaml"), env={})
    assert settings.server_host == "127.0.0.1"


def test_a_misspelled_environment_variable_stops_start_up_naming_it(tmp_path: Path) -> None:
    config = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env={"TAKO_VM_MAX_WORKRS": "3", "TAKO_VM_NOT_A_SETTING": "1"})
    message = str(refused.value)
    assert "TAKO_VM_MAX_WORKRS (did you mean TAKO_VM_MAX_WORKERS?)" in message
    assert "TAKO_VM_NOT_A_SETTING" in message
    with pytest.raises(ConfigError, match="TAKO_VM_KUBERNETES__NAMESPAC "):
        load_settings(config, env={"TAKO_VM_KUBERNETES__NAMESPAC": "x"})
    with pytest.raises(ConfigError, match="TAKO_VM_SEVER_PORT"):  # a _PORT typo is not a Service link
        load_settings(config, env={"TAKO_VM_SEVER_PORT": "8080"})


def test_client_side_and_kubernetes_service_names_are_not_settings(tmp_path: Path) -> None:
    env = {
        "TAKO_VM_URL": "http://127.0.0.1:8000",
        "TAKO_VM_API_KEY": "k" * 20,
        "TAKO_VM_CONFIG": write(tmp_path, "max_workers: 3\n"),
        "TAKO_VM_RUNTIME_CLASS_NAME": "gvisor",
        # what Kubernetes injects for a release's `tako-vm-shim` Service
        "TAKO_VM_SHIM_SERVICE_HOST": "10.0.0.7",
        "TAKO_VM_SHIM_SERVICE_PORT": "8000",
        "TAKO_VM_SHIM_SERVICE_PORT_HTTP": "8000",
        "TAKO_VM_SHIM_PORT": "tcp://10.0.0.7:8000",
        "TAKO_VM_SHIM_PORT_8000_TCP": "tcp://10.0.0.7:8000",
        "TAKO_VM_SHIM_PORT_8000_TCP_PROTO": "tcp",
        "TAKO_VM_SHIM_PORT_8000_TCP_PORT": "8000",
        "TAKO_VM_SHIM_PORT_8000_TCP_ADDR": "10.0.0.7",
    }
    assert load_settings(None, env=env).max_workers == 3


def test_an_explicit_runsc_that_does_not_work_is_an_error_naming_it(tmp_path: Path) -> None:
    config = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match=r"TAKO_VM_RUNSC=/nonexistent/runsc: does not exist"):
        load_settings(config, env={"TAKO_VM_RUNSC": "/nonexistent/runsc"})
    not_executable = tmp_path / "runsc"
    not_executable.write_text("")
    with pytest.raises(ConfigError, match=rf"runsc_path={not_executable}: is not an executable file"):
        load_settings(write(tmp_path, f"runsc_path: {not_executable}\n"), env={})
    # the kubernetes backend never runs runsc itself
    assert load_settings(
        config, env={"TAKO_VM_RUNSC": "/nonexistent/runsc"}, overrides={"backend": "kubernetes"}
    )


# ------------------------------------------------------------------ max_workers derived from the machine


@pytest.mark.parametrize(
    ("cpus", "memory_gib", "expected"),
    [
        (2, 22, 4),  # 2 per CPU
        (1.5, 64, 3),  # a fractional cgroup quota
        (16, 3, 3),  # at most 1 per GiB of available memory
        (0.5, 8, 2),  # never below 2
        (1, 1, 2),
        (128, 1024, 64),  # never above 64
    ],
)
def test_derived_max_workers_is_two_per_cpu_capped_by_memory_and_clamped(
    cpus: float, memory_gib: int, expected: int
) -> None:
    assert config.derived_max_workers(cpus, memory_gib * GIB + GIB // 2) == expected


def fake_files(files: dict[str, str]) -> config.ReadFile:
    return lambda path: files.get(str(path))


def test_the_tightest_cgroup_cpu_quota_on_the_way_to_the_root_counts() -> None:
    v2 = fake_files({
        "/sys/fs/cgroup/a/cpu.max": "150000 100000\n",
        "/sys/fs/cgroup/a/b/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert config.cgroup_cpu_quota("0::/a/b\n", v2) == 1.5
    v1 = fake_files({
        "/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us": "200000\n",
        "/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert config.cgroup_cpu_quota("4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n", v1) == 2.0
    unlimited = fake_files(
        {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert config.cgroup_cpu_quota("1:cpu:/\n0::/\n", unlimited) is None


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_limit() -> None:
    assert config.mem_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n") == 2048 * 1024
    assert config.mem_available("MemTotal: 100 kB\n") is None
    limit = fake_files({"/sys/fs/cgroup/srv/memory.max": "3221225472\n"})
    assert config.cgroup_memory_limit("0::/srv\n", limit) == 3 * GIB
    assert (
        config.cgroup_memory_limit("0::/srv\n", fake_files({"/sys/fs/cgroup/srv/memory.max": "max\n"}))
        is None
    )
    v1 = fake_files({"/sys/fs/cgroup/memory/x/memory.limit_in_bytes": "1073741824\n"})
    assert config.cgroup_memory_limit("4:memory:/x\n1:cpu:/\n", v1) == GIB


def test_max_workers_unset_or_empty_is_derived_and_a_number_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "machine_max_workers", lambda: 9)
    assert load_settings(write(tmp_path, "{}\n"), env={}).max_workers == 9
    assert load_settings(write(tmp_path, "max_workers:\n"), env={}).max_workers == 9  # the shipped file
    assert load_settings(write(tmp_path, "{}\n"), env={"TAKO_VM_MAX_WORKERS": ""}).max_workers == 9
    assert load_settings(write(tmp_path, "max_workers: 3\n"), env={}).max_workers == 3
    assert load_settings(write(tmp_path, "max_workers:\n"), env={"TAKO_VM_MAX_WORKERS": "5"}).max_workers == 5
    with pytest.raises(ConfigError, match="max_workers"):
        load_settings(write(tmp_path, "max_workers: 0\n"), env={})
    shipped = Path(__file__).resolve().parents[2] / "tako_vm.yaml"
    assert load_settings(str(shipped), env={}).max_workers == 9


def test_the_machine_derived_value_respects_affinity_quota_and_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "mem_available", lambda meminfo: 100 * GIB)
    monkeypatch.setattr(config, "cgroup_memory_limit", lambda own, read: None)
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda own, read: None)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 1, 2})  # 3 usable CPUs
    assert config.machine_max_workers() == 6
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(40)))
    assert config.machine_max_workers() == 64
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda own, read: 1.5)  # a container's CPU quota
    assert config.machine_max_workers() == 3
    monkeypatch.setattr(config, "cgroup_memory_limit", lambda own, read: 2 * GIB + 1)
    monkeypatch.setattr(config, "cgroup_cpu_quota", lambda own, read: None)
    assert config.machine_max_workers() == 2


async def test_health_reports_the_effective_derived_max_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_shim_queue import FakeSandboxRunner, make_backend

    monkeypatch.setattr(config, "machine_max_workers", lambda: 7)
    backend = make_backend(tmp_path, FakeSandboxRunner())
    await backend.start()
    try:
        health = await backend.health()
        running_workers = sum(t.get_name().startswith("tako-worker-") for t in backend._tasks)
    finally:
        await backend.close()
    assert health.queue_stats.max_workers == 7
    assert running_workers == 7  # the value shown is the one the queue runs with
