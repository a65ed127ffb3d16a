"""Configuration: tako_vm.yaml + TAKO_VM_* overrides, validated at start-up with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako_shim.config import ConfigError, Settings, load_settings


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
        4,
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
