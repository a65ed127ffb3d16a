"""tako_runner.outcome: envelope framing/parsing and the pure classification shared by the local
executor and the operator."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tako_runner import runner
from tako_runner.outcome import Outcome, classify, classify_error, frame_envelope, parse_envelope


def env(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "mode": "run", "error": None, "exit_code": 0, "stdout": "", "stderr": ""}
    base.update(fields)
    return base


# ------------------------------------------------------------------ framing and parsing


def test_runner_and_parser_agree_on_the_frame() -> None:
    envelope = env(stdout="héllo\n", output={"a": [1, 2]})
    assert runner.frame(envelope) == frame_envelope(envelope)
    assert parse_envelope(runner.frame(envelope)) == envelope


def test_last_valid_frame_wins() -> None:
    first, second = env(stdout="first"), env(stdout="second")
    assert parse_envelope(frame_envelope(first) + "noise\n" + frame_envelope(second)) == second


def test_a_later_broken_frame_does_not_hide_the_valid_one() -> None:
    good = frame_envelope(env(stdout="real"))
    body = json.dumps(env(stdout="forged"), separators=(",", ":"))
    broken = f"\nTAKO-ENVELOPE-V1 {len(body)} {'0' * 64}\n{body}\nTAKO-ENVELOPE-END\n"
    assert parse_envelope(good + broken) == env(stdout="real")


def tamper(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: tamper(t, '"stdout":"x"', '"stdout":"y"'),  # body changed, sha256 no longer matches
        lambda t: tamper(t, "TAKO-ENVELOPE-END", "TAKO-ENVELOPE-EN"),  # end marker missing
        lambda t: t.replace("\nTAKO-ENVELOPE-V1", "xTAKO-ENVELOPE-V1", 1),  # header not at a line start
        lambda t: (
            t.split("\n", 3)[0]
            + "\n"
            + t.split("\n", 3)[1].replace(" ", " 9", 1)
            + "\n"
            + t.split("\n", 3)[2]
        ),
        lambda t: t[: len(t) // 2],  # cut off
        lambda t: "",
    ],
    ids=["sha", "end", "line-start", "length", "cut", "empty"],
)
def test_malformed_frames_are_rejected(mutate: Any) -> None:
    assert parse_envelope(mutate(frame_envelope(env(stdout="x")))) is None


@pytest.mark.parametrize("value", [[1, 2], "text", {"v": 2}, {"no": "version"}])
def test_only_version_1_objects_count(value: Any) -> None:
    body = json.dumps(value, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    assert parse_envelope(f"\nTAKO-ENVELOPE-V1 {len(body)} {digest}\n{body}\nTAKO-ENVELOPE-END\n") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    result = parse_envelope(text)
    assert result is None or isinstance(result, dict)


@settings(max_examples=60, deadline=None)
@given(
    fields=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k != "v"), json_values, max_size=6
    ),
    before=st.text(max_size=200),
    after=st.text(max_size=200).filter(lambda t: "TAKO-ENVELOPE" not in t),
)
def test_a_frame_survives_any_surrounding_noise(fields: dict[str, Any], before: str, after: str) -> None:
    envelope = {"v": 1, **fields}
    assert parse_envelope(before + frame_envelope(envelope) + after) == envelope


@settings(max_examples=100, deadline=None)
@given(user_output=st.text(max_size=300))
def test_user_output_inside_an_envelope_cannot_inject_a_frame(user_output: str) -> None:
    forged = frame_envelope(env(exit_code=0, stdout="forged"))
    real = env(exit_code=3, stdout=user_output + forged)
    assert parse_envelope(forged + frame_envelope(real)) == real


# ------------------------------------------------------------------ classification

OBSERVED: dict[str, Any] = {
    "exit_code": 0,
    "oom_killed": False,
    "deadline_exceeded": False,
    "cancelled": False,
    "runtime": "runsc",
}


def outcome_of(install: dict[str, Any] | None, run: dict[str, Any] | None, **observed: Any) -> Outcome:
    return classify(install, run, **{**OBSERVED, **observed})


def test_success() -> None:
    run = env(
        stdout="1\n",
        output={"a": 1},
        artifacts=[
            {
                "name": "f",
                "size_bytes": 1,
                "sha256": "0" * 64,
                "content_type": "text/plain",
                "data_b64": "eA==",
            }
        ],
        timing={"startup_ms": 5, "execution_ms": 40, "total_ms": 50},
        resource_usage={"max_rss_mb": 9.5, "cpu_time_ms": 30, "wall_time_ms": 40},
    )
    out = outcome_of(None, run)
    assert out.status == "succeeded" and out.success and out.error is None
    assert out.output == {"a": 1} and out.stdout == "1\n" and out.runtime == "runsc"
    assert out.artifacts == [{"name": "f", "size_bytes": 1, "sha256": "0" * 64, "content_type": "text/plain"}]
    assert out.timing == {
        "startup_ms": 5, "dep_install_ms": 0, "execution_ms": 40, "total_ms": 50,
        "phase_at_exit": "completed",
    }  # fmt: skip
    assert out.to_dict()["status"] == "succeeded"


def test_timing_adds_the_install_phase() -> None:
    install = env(mode="install", timing={"dep_install_ms": 3000, "total_ms": 3100})
    run = env(timing={"startup_ms": 20, "execution_ms": 40, "total_ms": 70})
    out = outcome_of(install, run)
    assert out.timing["dep_install_ms"] == 3000
    assert out.timing["startup_ms"] == 3120
    assert out.timing["total_ms"] == 3170


@pytest.mark.parametrize(
    ("stderr", "exit_code", "kind"),
    [
        (
            '  File "/code/main.py", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n',
            1,
            "syntax_error",
        ),
        ("Traceback (most recent call last):\nModuleNotFoundError: No module named 'x'\n", 1, "import_error"),
        ("Traceback:\nNameError: name 'x' is not defined\n", 1, "name_error"),
        ("Traceback:\njson.decoder.JSONDecodeError: Expecting value\n", 1, "json_error"),
        ("Traceback:\nZeroDivisionError: division by zero\n", 1, "division_error"),
        ("Traceback:\nsocket.gaierror: [Errno -2] Name or service not known\n", 1, "network_error"),
        ("Traceback:\nCustomError: mine\n", 1, "runtime_error"),
        ("", 7, "runtime_error"),
        ("", 139, "segfault"),
        ("", 137, "killed"),
        ("", 134, "abort"),
    ],
)
def test_failed_user_code_gets_an_error_type(stderr: str, exit_code: int, kind: str) -> None:
    out = outcome_of(None, env(exit_code=exit_code, stderr=stderr))
    assert out.status == "failed"
    assert out.exit_code == exit_code
    assert out.error is not None and out.error["type"] == kind and out.error["phase"] == "execution"
    assert out.timing["phase_at_exit"] == "execution"


def test_memory_error_is_oom() -> None:
    out = outcome_of(None, env(exit_code=1, stderr="Traceback:\nMemoryError\n"))
    assert out.status == "oom" and out.error is not None and out.error["type"] == "oom"


def test_runner_timeout_is_an_execution_timeout() -> None:
    err = {"type": "execution_timeout", "message": "execution exceeded timeout=2s", "phase": "execution"}
    out = outcome_of(None, env(exit_code=143, error=err))
    assert out.status == "timeout" and out.error == err
    assert out.timing["phase_at_exit"] == "execution"


def test_egress_not_closed_fails_closed() -> None:
    err = {"type": "egress_not_closed", "message": "network egress still open", "phase": "startup"}
    out = outcome_of(None, env(exit_code=None, error=err))
    assert out.status == "failed" and out.error == err


def test_cancel_beats_everything() -> None:
    out = outcome_of(None, env(exit_code=0), cancelled=True, oom_killed=True, deadline_exceeded=True)
    assert out.status == "cancelled" and out.error is not None and out.error["type"] == "cancelled"


def test_oom_from_the_cgroup_beats_a_missing_envelope() -> None:
    out = outcome_of(None, None, exit_code=1, oom_killed=True)
    assert (
        out.status == "oom"
        and out.error is not None
        and out.error["message"] == "Execution exceeded memory limit"
    )


@pytest.mark.parametrize(
    ("install", "run", "exit_code", "phase", "kind"),
    [
        (None, None, None, "startup", "startup_timeout"),
        (env(mode="install"), None, 137, "execution", "execution_timeout"),
        (None, env(exit_code=0), 0, "execution", "execution_timeout"),
    ],
)
def test_outside_deadline(install: Any, run: Any, exit_code: int | None, phase: str, kind: str) -> None:
    out = outcome_of(install, run, exit_code=exit_code, deadline_exceeded=True)
    assert out.status == "timeout"
    assert out.error is not None and out.error["type"] == kind and out.error["phase"] == phase


def test_install_failure_is_a_dependency_error_at_startup() -> None:
    err = {
        "type": "dependency_error",
        "message": "pip install failed: No matching distribution",
        "phase": "startup",
    }
    out = outcome_of(env(mode="install", exit_code=1, stderr="ERROR: no", error=err), None)
    assert out.status == "failed" and out.error == err
    assert out.stderr == "ERROR: no"
    assert out.timing["phase_at_exit"] == "startup"


def test_install_timeout_is_a_startup_timeout() -> None:
    err = {"type": "startup_timeout", "message": "installing requirements exceeded", "phase": "startup"}
    out = outcome_of(env(mode="install", error=err), None)
    assert out.status == "timeout" and out.error is not None and out.error["type"] == "startup_timeout"


@pytest.mark.parametrize(
    ("exit_code", "kind"), [(137, "killed"), (1, "internal_error"), (None, "internal_error")]
)
def test_missing_envelope(exit_code: int | None, kind: str) -> None:
    out = outcome_of(None, None, exit_code=exit_code)
    assert out.status == "failed" and out.error is not None and out.error["type"] == kind


def test_classify_error_uses_the_last_unindented_line() -> None:
    stderr = (
        "Traceback (most recent call last):\n  File 'x', line 1\n    raise KeyError('k')\nKeyError: 'k'\n"
    )
    assert classify_error(1, stderr) == ("key_error", "KeyError: 'k'")
    assert classify_error(1, "some text\n  indented last line\n")[0] == "runtime_error"
    assert classify_error(None, "")[0] == "unknown"


@pytest.mark.parametrize("container_exit", [137, 1, 2, 143])
def test_an_envelope_from_a_runner_that_did_not_exit_0_is_not_trusted(container_exit: int) -> None:
    """User code can write a frame to the runner's stdout and then kill the runner: never a success."""
    forged = env(exit_code=0, stdout="forged", output={"forged": True})
    out = outcome_of(None, forged, exit_code=container_exit)
    assert out.status == "failed" and out.output is None and out.stdout == ""
    assert out.error is not None and out.error["type"] in ("killed", "internal_error")


def test_an_envelope_counts_when_the_exit_code_is_unknown() -> None:
    assert outcome_of(None, env(exit_code=0), exit_code=None).status == "succeeded"


def test_crafted_header_floods_parse_in_linear_time() -> None:
    """User code can write header lines to the runner's stdout; parsing must not go quadratic."""
    import time

    header = f"TAKO-ENVELOPE-V1 1000000 {'f' * 64}\n"
    width = len(f"TAKO-ENVELOPE-V1 {0:010d} {'e' * 64}\n")
    sharing_one_end = "".join(f"TAKO-ENVELOPE-V1 {(2999 - i) * width:010d} {'e' * 64}\n" for i in range(3000))
    real = frame_envelope(env(stdout="real"))
    for crafted in (header * 20_000 + "x" * 1_000_000, sharing_one_end + "\nTAKO-ENVELOPE-END\n"):
        started = time.monotonic()
        assert parse_envelope(crafted) is None
        assert parse_envelope(crafted + real) == env(stdout="real")
        assert time.monotonic() - started < 2.0  # quadratic parsing takes minutes on these inputs


def test_the_frame_markers_are_the_runners() -> None:
    """outcome.py (host side) and runner.py (shipped alone: it cannot import outcome) agree on the frame."""
    from tako_runner import outcome

    assert (outcome.HEADER, outcome.END_MARKER, outcome.MAC_MARKER, outcome.ENVELOPE_VERSION) == (
        runner.HEADER,
        runner.END_MARKER,
        runner.MAC_MARKER,
        runner.ENVELOPE_VERSION,
    )
