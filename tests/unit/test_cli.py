"""The `tako-vm` command's parsing, formatting and error paths (no server needed).

Runs against a real server are in tests/integration/test_sdk_cli.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tako_vm import cli
from tako_vm.testing import free_port


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"status": "succeeded", "exit_code": 0}, 0),
        ({"status": "failed", "exit_code": 3}, 3),
        ({"status": "failed", "exit_code": None}, 1),
        ({"status": "failed", "exit_code": -9}, 1),
        ({"status": "timeout", "exit_code": None}, 124),
        ({"status": "oom", "exit_code": 1}, 137),
        ({"status": "cancelled"}, 130),
    ],
)
def test_run_exit_code_follows_the_job(record: dict[str, object], expected: int) -> None:
    assert cli.exit_code_for(record) == expected


def test_input_must_be_a_json_object(tmp_path: Path) -> None:
    assert cli.parse_input('{"n": 5}') == {"n": 5}
    data = tmp_path / "in.json"
    data.write_text('{"from": "file"}')
    assert cli.parse_input(f"@{data}") == {"from": "file"}
    with pytest.raises(cli.CommandError, match="--input: must be a JSON object"):
        cli.parse_input("[1, 2]")
    with pytest.raises(cli.CommandError, match="--input: not valid JSON"):
        cli.parse_input("{nope")
    with pytest.raises(cli.CommandError, match="--input: cannot read"):
        cli.parse_input(f"@{tmp_path / 'missing.json'}")


def test_executions_table_is_aligned_and_readable() -> None:
    items = [
        {
            "execution_id": "a1",
            "status": "succeeded",
            "job_type": "default",
            "exit_code": 0,
            "duration_ms": 412,
            "created_at": "2026-11-28T09:00:01.123456+00:00",
            "error": None,
        },
        {
            "execution_id": "b22222",
            "status": "failed",
            "job_type": "default",
            "exit_code": 1,
            "duration_ms": 2500,
            "created_at": "2026-11-28T09:00:02+00:00",
            "error": {"type": "runtime_error", "message": "boom"},
        },
    ]
    table = cli.format_table(cli.execution_rows(items), cli.EXECUTION_COLUMNS).splitlines()
    assert table[0].split() == [
        "EXECUTION",
        "ID",
        "STATUS",
        "JOB",
        "TYPE",
        "EXIT",
        "DURATION",
        "CREATED",
        "ERROR",
    ]
    assert table[1].split() == ["a1", "succeeded", "default", "0", "412ms", "2026-11-28", "09:00:01"]
    assert table[2].split()[-1] == "runtime_error" and "2.50s" in table[2]
    assert table[1].index("succeeded") == table[0].index("STATUS") == table[2].index("failed")


def test_progress_line_shows_queue_position_only_while_waiting() -> None:
    assert cli.progress_line("j", {"status": "pending", "queue_position": 2}, 1.25) == (
        "tako-vm: job j pending (queue position 2) after 1.2s"
    )
    assert cli.progress_line("j", {"status": "running", "queue_position": None}, 3) == (
        "tako-vm: job j running after 3.0s"
    )


def test_config_prints_the_effective_settings_with_keys_masked(tmp_path: Path) -> None:
    config = tmp_path / "tako_vm.yaml"
    config.write_text("api_auth_enabled: true\napi_keys: ['secret-key-0123456789']\nmax_workers: 3\n")
    code, out, _ = _main("--config", str(config), "config", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["max_workers"] == 3 and shown["default_timeout"] == 30
    assert "secret-key-0123456789" not in out and list(shown["api_keys"]) == ["secr…(masked)"]
    code, out, _ = _main("--config", str(config), "config")
    assert code == 0 and "max_workers: 3" in out and "secret-key-0123456789" not in out


def test_invalid_configuration_is_reported_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "tako_vm.yaml"
    config.write_text("max_workers: 0\n")
    code, _, err = _main("--config", str(config), "config")
    assert code == cli.EXIT_USAGE and "max_workers" in err


def test_missing_server_package_is_a_clear_message() -> None:
    with pytest.raises(cli.CommandError, match=r"not available in this installation \(tako_shim.nowhere"):
        cli._import_extra("tako_shim.nowhere", "tako-vm server", "server")


def test_run_of_a_missing_file_fails_without_contacting_a_server(tmp_path: Path) -> None:
    code, out, err = _main("run", str(tmp_path / "nope.py"), "--url", "http://127.0.0.1:9")
    assert code == cli.EXIT_USAGE and "cannot read" in err and out == ""


def test_unreachable_server_exits_3_with_the_reason() -> None:
    code, _, err = _main("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == cli.EXIT_API and "ConnectError" in err


def test_version() -> None:
    code, out, _ = _main("version")
    assert code == 0 and out.startswith("tako-vm ")


def test_operator_command_forwards_the_chart_flags_to_run_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `run_operator` is replaced by a recorder (it would block serving a cluster), and the
    recorded call is then bound against the real signature so the two cannot drift apart."""
    import inspect

    import tako_operator
    from tako_operator import main as operator_main

    real = operator_main.run_operator
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(operator_main, "run_operator", lambda **kwargs: calls.append(kwargs))
    forbidden: list[bool] = []  # the real one would keep this test process from importing `kubernetes`
    monkeypatch.setattr(tako_operator, "forbid_kubernetes_client", lambda: forbidden.append(True))
    argv = [
        "operator",
        "--namespace=a",
        "--namespace=b",
        "--peering=tako",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    code, _, err = _main(*argv)
    assert code == 0, err
    assert forbidden == [True]
    (call,) = calls
    assert call["namespaces"] == ["a", "b"] and call["peering"] == "tako" and call["standalone"] is False
    assert call["liveness"] == "http://0.0.0.0:8080/healthz" and call["all_namespaces"] is False
    inspect.signature(real).bind(**call)
    code, _, err = _main("operator", "--namespace=a", "--all-namespaces")
    assert code == cli.EXIT_USAGE and "mutually exclusive" in err


def test_id_prefixes_match_like_docker() -> None:
    from tako_vm.cli.jobs import matching_ids

    ids = ["0b6c1111-aaaa", "0b6c2222-bbbb", "ffff0000-cccc", "0b6c1111-aaaa"]
    assert matching_ids("0B6C1", ids) == ["0b6c1111-aaaa"]  # case-insensitive, repeats once
    assert matching_ids("0b6c", ids) == ["0b6c1111-aaaa", "0b6c2222-bbbb"]
    assert matching_ids("9", ids) == []


def test_artifact_names_cannot_leave_the_download_directory(tmp_path: Path) -> None:
    from tako_vm.cli.jobs import safe_artifact_path

    assert safe_artifact_path(tmp_path, "plots/a.png") == tmp_path / "plots" / "a.png"
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(cli.CommandError, match="not a relative path"):
            safe_artifact_path(tmp_path, bad)


def test_a_422_detail_becomes_one_readable_line() -> None:
    from tako_vm.cli.errors import validation_line

    detail = json.dumps(
        [
            {"loc": ["query", "limit"], "msg": "Input should be greater than or equal to 1", "type": "x"},
            {"loc": ["body", "timeout"], "msg": "Value error, too long", "type": "y"},
        ]
    )
    assert validation_line(detail) == "limit: Input should be greater than or equal to 1; timeout: too long"
    assert validation_line("requirements: disabled") == "requirements: disabled"


def test_tracebacks_get_the_users_file_name() -> None:
    from tako_vm.cli.run import with_user_filename

    stderr = 'Traceback (most recent call last):\n  File "/code/main.py", line 4, in <module>\n'
    assert with_user_filename(stderr, "src/job.py") == (
        'Traceback (most recent call last):\n  File "src/job.py", line 4, in <module>\n'
    )


def test_server_status_lines_name_what_a_user_needs() -> None:
    from tako_vm.cli.status import server_lines

    health = {
        "status": "healthy",
        "version": "0.1.0",
        "backend": "local",
        "runtime": "runsc",
        "runsc_version": "release-20220905.0",
        "platform": "ptrace",
        "cgroup": "v2",
        "data_dir": "/var/lib/tako",
        "warm_pool": {"filled": 1, "target": 2},
        "auth_enabled": True,
        "queue_stats": {"pending": 3, "running": 1, "max_workers": 4, "max_queue_size": 100},
        "warnings": ["slow"],
        "docker_available": True,
    }
    shown = dict(server_lines(health))
    assert shown["sandbox"] == "runsc release-20220905.0 (platform ptrace)"
    assert (shown["warm pool"], shown["auth"], shown["cgroups"]) == ("1/2 ready", "on", "v2")
    assert shown["queue"] == "3 pending, 1 running (4 workers, room for 100)"
    assert shown["warning"] == "slow" and "docker" not in str(server_lines(health))


def test_exit_column_matches_run_exit_codes() -> None:
    from tako_vm.cli.executions import shown_exit

    assert [shown_exit(r) for r in ({"status": "timeout", "exit_code": -9}, {"status": "oom"})] == [
        "124",
        "137",
    ]
    assert (
        shown_exit({"status": "running"}) == "-" and shown_exit({"status": "failed", "exit_code": 3}) == "3"
    )


def test_ptrace_and_no_sandbox_are_warned_about() -> None:
    from tako_shim.backends.local.health_details import runtime_warnings

    assert runtime_warnings({"runtime": "runsc", "platform": "systrap", "version": "x"}) == []
    (ptrace,) = runtime_warnings({"runtime": "runsc", "platform": "ptrace", "version": "release-20220905.0"})
    assert "release-20220905.0" in ptrace and "12-20x slower" in ptrace and "TAKO_RUNSC_RETRY=1" in ptrace
    (none,) = runtime_warnings({"runtime": "none"})
    assert "WITHOUT a sandbox" in none


def test_json_log_lines() -> None:
    import logging

    from tako_shim.logsetup import JsonFormatter

    record = logging.LogRecord("tako_shim.x", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert (
        entry["message"] == "hello there" and entry["level"] == "WARNING" and entry["logger"] == "tako_shim.x"
    )
    assert entry["time"].endswith("+00:00")


def test_config_option_after_the_sub_command(tmp_path: Path) -> None:
    config = tmp_path / "tako_vm.yaml"
    config.write_text("max_workers: 5\n")
    before = _main("--config", str(config), "config", "--json")
    after = _main("config", "-c", str(config), "--json")
    assert before[0] == after[0] == 0 and json.loads(after[1])["max_workers"] == 5 and before[1] == after[1]
