"""Pure parts of sessions: the session sandbox's OCI spec, the TTL/idle/pause rules, and the session
runner's notebook semantics (run in this process: the runner is stdlib and has no sandbox logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tako_runner import session as runner
from tako_shim.backends.local import sessions_spec
from tako_shim.backends.local.sandbox import oci as sandbox

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def base_spec(mode: str = "run") -> sandbox.SandboxSpec:
    return sandbox.SandboxSpec(
        mode=mode, rootfs="/w/rootfs", etc_dir="/w/etc", runner_dir="/w/session-runner", code_dir="/s/code",
        input_dir="/s/input", deps_dir=None, cgroup_path="/tako-vm/x", memory_limit_bytes=256 * sandbox.MIB,
        pids_limit=100, cpu_limit=1.0, tmp_size_bytes=64 * sandbox.MIB, output_size_bytes=sandbox.MIB,
        max_file_bytes=sandbox.MIB, system_root="/sysroot",
    )  # fmt: skip


def test_session_sandbox_keeps_the_run_sandbox_hardening_and_binds_the_channel() -> None:
    spec = sessions_spec.session_oci_spec(
        base_spec(), channel_in="/s/in", channel_out="/s/out", max_output=100
    )
    assert {"type": "network"} in spec["linux"]["namespaces"]  # its own, empty network namespace
    assert spec["root"]["readonly"] is True
    assert spec["process"]["user"] == {"uid": sandbox.SANDBOX_UID, "gid": sandbox.SANDBOX_GID}
    assert spec["process"]["noNewPrivileges"] is True
    assert all(caps == [] for caps in spec["process"]["capabilities"].values())
    assert spec["linux"]["resources"]["memory"]["limit"] == 256 * sandbox.MIB
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" in mounts["/session/in"]["options"] and mounts["/session/in"]["source"] == "/s/in"
    assert "rw" in mounts["/session/out"]["options"] and "noexec" in mounts["/session/out"]["options"]
    assert "/output" not in mounts
    assert spec["process"]["args"][3] == "/runner/session.py"


def test_an_install_spec_cannot_become_a_session() -> None:
    with pytest.raises(ValueError, match="no network"):
        sessions_spec.session_oci_spec(base_spec("install"), channel_in="a", channel_out="b", max_output=1)


def test_ttl_and_idle_rules() -> None:
    rules = sessions_spec.Deadlines(expires_at=T0 + timedelta(seconds=60), idle_timeout_seconds=10)
    assert rules.end_reason(T0 + timedelta(seconds=5), T0, busy=False) is None
    assert rules.end_reason(T0 + timedelta(seconds=10), T0, busy=False) == "idle"
    assert rules.end_reason(T0 + timedelta(seconds=30), T0, busy=True) is None  # a running call is not idle
    assert rules.end_reason(T0 + timedelta(seconds=60), T0 + timedelta(seconds=59), busy=True) == "expired"


def test_pause_rule() -> None:
    assert sessions_spec.should_pause(T0 + timedelta(seconds=5), T0, 5, busy=False)
    assert not sessions_spec.should_pause(T0 + timedelta(seconds=4), T0, 5, busy=False)
    assert not sessions_spec.should_pause(T0 + timedelta(seconds=99), T0, 5, busy=True)
    assert not sessions_spec.should_pause(T0 + timedelta(seconds=99), T0, None, busy=False)


@pytest.mark.parametrize(
    ("code", "result"),
    [
        ("x = 1", None),  # a statement last: no result
        ("1 + 1", "2"),
        ("'a' * 3", "'aaa'"),
        ("x = 2\nx * 21", "42"),
        ("print('only output')", None),  # the value is None: nothing shown, as in a notebook
        ("if True:\n    y = 3\ny", "3"),
    ],
)
def test_result_is_the_repr_of_the_last_expression(code: str, result: str | None) -> None:
    assert runner.run_cell({}, code, 1, 5, 1000)["result"] == result


def test_namespace_persists_and_errors_carry_a_traceback() -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    runner.run_cell(namespace, "def f(v):\n    return v / 0", 1, 5, 1000)
    failed = runner.run_cell(namespace, "f(1)", 2, 5, 1000)
    assert failed["status"] == "failed" and failed["error"]["type"] == "ZeroDivisionError"
    assert "<cell-1>" in failed["error"]["traceback"] and "return v / 0" in failed["error"]["traceback"]
    syntax = runner.run_cell(namespace, "def (", 3, 5, 1000)
    assert syntax["status"] == "failed" and syntax["error"]["type"] == "SyntaxError"


def test_timeout_interrupts_the_cell_only() -> None:
    namespace: dict[str, object] = {}
    runner.run_cell(namespace, "kept = 'yes'", 1, 5, 1000)
    slow = runner.run_cell(namespace, "while True:\n    pass", 2, 0.2, 1000)
    assert slow["status"] == "timeout" and slow["error"]["type"] == "execution_timeout"
    assert runner.run_cell(namespace, "kept", 3, 5, 1000)["result"] == "'yes'"


def test_output_is_capped_and_marked() -> None:
    reply = runner.run_cell({}, "print('x' * 5000)", 1, 5, 100)
    assert reply["stdout_truncated"] and len(reply["stdout"]) < 200 and "TRUNCATED" in reply["stdout"]
