"""compute_status: the PythonJob status from a Pod (plain dict) and its logs.

The logs are REAL: each scenario runs the real runner (runner/tako_runner/runner.py) as a subprocess with
the job.json the builders produce (paths redirected into a temp dir), so the envelopes are exactly what a
Pod would print. The Pod dicts are written by hand in the shape the kubelet reports (no kubelet runs
here), including OOMKilled and DeadlineExceeded, which only the kubelet can observe. Every computed status
validates against both the CRD's status schema and the pydantic model.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_crd_schema import schema_errors

from tako_operator.core import builders, status
from tako_operator.core.builders import JobRejected
from tako_operator.settings import PodSettings
from tako_runner import runner
from tako_vm.models.crd import DEFAULT_JOB_TYPE, PythonJob, PythonJobStatus, PythonJobTypeSpec

NOW = datetime.datetime(2026, 11, 28, 10, 0, 0, tzinfo=datetime.UTC)
STARTED = "2026-11-28T09:59:50Z"
FINISHED = "2026-11-28T09:59:52Z"
SETTINGS = PodSettings()


def make_job(status_: dict[str, Any] | None = None, **spec: Any) -> PythonJob:
    spec.setdefault("code", "print('hi')")
    body: dict[str, Any] = {
        "metadata": {"name": "job1", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": spec,
    }
    if status_ is not None:
        body["status"] = status_
    return PythonJob.model_validate(body)


def run_real_runner(tmp_path: pathlib.Path, job: PythonJob, mode: str = "run", **overrides: Any) -> str:
    """Run the real runner with the builders' job.json, redirected into tmp_path; return its stdout."""
    job_type = PythonJobTypeSpec(image="python:3.11-slim", allow_runtime_requirements=True)
    config = builders.runner_config(job, job_type, SETTINGS)
    for name in ("code", "input", "output", "tmp", "deps"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "code" / "main.py").write_text(job.spec.code or "")
    (tmp_path / "input" / "data.json").write_text(json.dumps(job.spec.input_data or {}))
    config.update(
        code_path=str(tmp_path / "code" / "main.py"),
        input_path=str(tmp_path / "input" / "data.json"),
        output_dir=str(tmp_path / "output"),
        work_dir=str(tmp_path / "tmp"),
        deps_dir=str(tmp_path / "deps"),
        python=sys.executable,
        kill_all_processes=False,
        kill_grace_seconds=0.5,
        **overrides,
    )
    (tmp_path / "job.json").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-I", runner.__file__, mode, "--config", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def pod(
    job_state: dict[str, Any] | None = None,
    *,
    phase: str = "Running",
    reason: str | None = None,
    install_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pod_status: dict[str, Any] = {"phase": phase, "startTime": STARTED}
    if reason:
        pod_status["reason"] = reason
    if job_state is not None:
        pod_status["containerStatuses"] = [{"name": "job", "state": job_state}]
    if install_state is not None:
        pod_status["initContainerStatuses"] = [{"name": "install", "state": install_state}]
    return {
        "metadata": {"name": "job1-pod", "namespace": "ns"},
        "spec": {"runtimeClassName": "gvisor"},
        "status": pod_status,
    }


def exited(code: int, reason: str = "Completed") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "finishedAt": FINISHED}}


def check_valid(result: dict[str, Any]) -> dict[str, Any]:
    """The computed status fits the CRD's status schema and the pydantic model."""
    obj = {"apiVersion": "takovm.dev/v1alpha1", "kind": "PythonJob", "metadata": {"name": "job1"},
           "spec": {"code": "x"}, "status": result}  # fmt: skip
    assert schema_errors("PythonJob", obj) == []
    PythonJobStatus.model_validate(result)
    return result


def conditions(result: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in result["conditions"]}


# --- terminal outcomes from real runner envelopes --------------------------------------------------


def test_success_with_output_and_artifact(tmp_path: pathlib.Path) -> None:
    job = make_job(
        code="import json\nprint('total', 10)\njson.dump({'total': 10}, open('/output/result.json'.replace("
        "'/output', __import__('os').environ.get('OUT', '/output')), 'w'))",
        inputData={"n": 1},
    )
    # the code writes to /output; point it at the temp output dir through the runner's environment
    log = run_real_runner(tmp_path, job, environment={"OUT": str(tmp_path / "output")})
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert result["phase"] == "Succeeded"
    assert result["stdout"] == "total 10\n"
    assert result["exitCode"] == 0
    assert result["output"] == {"total": 10}
    assert [a["name"] for a in result["artifacts"]] == ["result.json"]
    assert len(result["artifacts"][0]["sha256"]) == 64
    assert "error" not in result
    assert result["timing"]["executionMs"] >= 0
    assert result["timing"]["phaseAtExit"] == "completed"
    assert result["podName"] == "job1-pod"
    assert result["runtime"] == "gvisor"
    assert result["startedAt"] == STARTED
    assert result["finishedAt"] == FINISHED
    assert result["duration"] == "2.0s"
    assert result["observedGeneration"] == 1
    assert conditions(result) == {
        "Ready": "True",
        "Finished": "True",
        "Admitted": "True",
        "Succeeded": "True",
        "Failed": "False",
    }


def test_failure_is_classified_with_traceback_in_stderr(tmp_path: pathlib.Path) -> None:
    job = make_job(code="print('about to fail')\nundefined_name + 1\n")
    log = run_real_runner(tmp_path, job)
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert result["phase"] == "Failed"
    assert result["error"]["type"] == "name_error"
    assert result["error"]["phase"] == "execution"
    assert "NameError" in result["stderr"]
    assert result["stdout"] == "about to fail\n"
    assert result["exitCode"] == 1
    assert result["message"].startswith("name_error: ")
    # kstatus: Stalled=True (Failed); `kubectl wait --for=condition=Ready` does not pass.
    assert conditions(result) == {
        "Ready": "False",
        "Stalled": "True",
        "Finished": "True",
        "Admitted": "True",
        "Succeeded": "False",
        "Failed": "True",
    }


def test_runner_deadline_is_a_timeout(tmp_path: pathlib.Path) -> None:
    job = make_job(code="import time\nprint('start', flush=True)\ntime.sleep(30)\n", timeoutSeconds=1)
    log = run_real_runner(tmp_path, job)
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert result["phase"] == "Timeout"
    assert result["error"]["type"] == "execution_timeout"
    assert "start" in result["stdout"]
    assert conditions(result)["Failed"] == "True"


def test_large_streams_are_clipped_to_the_status_budget(tmp_path: pathlib.Path) -> None:
    job = make_job(code="print('HEAD' + 'x' * 200_000 + 'TAIL')\n")
    log = run_real_runner(tmp_path, job)
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert result["stdoutTruncated"] is True
    assert len(result["stdout"].encode()) <= SETTINGS.status_stream_bytes
    assert result["stdout"].startswith("HEAD")
    assert "[TRUNCATED " in result["stdout"]


def test_oversize_output_is_left_out_and_flagged(tmp_path: pathlib.Path) -> None:
    code = (
        "import json, os\njson.dump({'blob': 'y' * 50_000}, open(os.environ['OUT'] + '/result.json', 'w'))\n"
    )
    job = make_job(code=code)
    log = run_real_runner(tmp_path, job, environment={"OUT": str(tmp_path / "output")})
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert result["phase"] == "Succeeded"
    assert "output" not in result
    assert result["outputTruncated"] is True


@pytest.mark.slow
def test_install_failure_is_a_dependency_error(tmp_path: pathlib.Path) -> None:
    job = make_job(requirements=["surely-not-a-real-package-tako==0.0.1"], jobType="pip")
    log = run_real_runner(tmp_path, job, mode="install", pip_extra_args=["--no-index"])
    the_pod = pod(install_state=exited(0), phase="Failed")
    result = check_valid(status.compute_status(job, the_pod, {"install": log}, NOW))
    assert result["phase"] == "Failed"
    assert result["error"]["type"] == "dependency_error"
    assert result["error"]["phase"] == "startup"


# --- outcomes only the kubelet can observe ---------------------------------------------------------


def test_oom_killed_container_is_oom() -> None:
    result = check_valid(
        status.compute_status(make_job(), pod(exited(137, "OOMKilled"), phase="Failed"), {}, NOW)
    )
    assert result["phase"] == "OOM"
    assert result["error"]["type"] == "oom"
    assert conditions(result)["Failed"] == "True"


def test_active_deadline_exceeded_is_a_timeout() -> None:
    the_pod = pod(exited(137, "Error"), phase="Failed", reason="DeadlineExceeded")
    result = check_valid(status.compute_status(make_job(), the_pod, {"job": "partial output\n"}, NOW))
    assert result["phase"] == "Timeout"
    assert result["error"]["type"] in ("execution_timeout", "startup_timeout")


def test_container_gone_without_an_envelope_is_an_internal_error_with_its_exit_code() -> None:
    result = check_valid(status.compute_status(make_job(), pod(exited(2, "Error"), phase="Failed"), {}, NOW))
    assert result["phase"] == "Failed"
    assert result["error"]["type"] == "internal_error"
    assert result["exitCode"] == 2


# --- cancellation -----------------------------------------------------------------------------------


def test_cancel_while_running() -> None:
    job = make_job(cancel=True)
    result = check_valid(status.compute_status(job, pod({"running": {"startedAt": STARTED}}), {}, NOW))
    assert result["phase"] == "Cancelled"
    assert result["error"]["type"] == "cancelled"
    assert result["finishedAt"] == status.format_time(NOW)
    assert conditions(result) == {
        "Ready": "False",
        "Stalled": "True",
        "Finished": "True",
        "Admitted": "True",
        "Succeeded": "False",
        "Failed": "False",
    }


def test_cancel_while_queued_keeps_admitted_false() -> None:
    queued = status.queued_status(make_job(), NOW)
    job = make_job(status_=queued, cancel=True)
    result = check_valid(status.compute_status(job, None, {}, NOW + datetime.timedelta(seconds=5)))
    assert result["phase"] == "Cancelled"
    assert conditions(result)["Admitted"] == "False"
    assert conditions(result)["Ready"] == "False"
    assert conditions(result)["Stalled"] == "True" and conditions(result)["Finished"] == "True"


# --- non-terminal phases, conditions and invariants -------------------------------------------------


def test_pending_then_running() -> None:
    job = make_job()
    pending = check_valid(status.compute_status(job, pod(phase="Pending"), {}, NOW))
    assert pending["phase"] == "Pending"
    assert conditions(pending) == {
        "Ready": "False",
        "Reconciling": "True",
        "Finished": "False",
        "Admitted": "True",
        "Succeeded": "Unknown",
        "Failed": "False",
    }
    running = check_valid(status.compute_status(job, pod({"running": {}}), {}, NOW))
    assert running["phase"] == "Running"
    assert running["runtime"] == "gvisor"


def test_queued_status() -> None:
    result = check_valid(status.queued_status(make_job(), NOW))
    assert result["phase"] == "Queued"
    assert result["message"] == "Waiting for a free slot"
    assert result["queuedAt"] == status.format_time(NOW)
    assert conditions(result)["Admitted"] == "False"


def test_rejected_job_fails_with_a_config_error_naming_the_field() -> None:
    error = JobRejected("spec.requirements", "job type 'default' does not allow runtime requirements")
    result = check_valid(status.rejected_status(make_job(), error, NOW))
    assert result["phase"] == "Failed"
    assert result["error"] == {
        "type": "config_error",
        "message": "spec.requirements: job type 'default' does not allow runtime requirements",
        "phase": "startup",
    }


def test_terminal_status_never_changes() -> None:
    done = make_job(status_={"phase": "Succeeded", "exitCode": 0})
    assert status.compute_status(done, pod(exited(1, "Error"), phase="Failed"), {}, NOW) == {}


def test_last_transition_time_moves_only_when_a_condition_changes() -> None:
    first = status.compute_status(make_job(), pod(phase="Pending"), {}, NOW)
    later = NOW + datetime.timedelta(seconds=30)
    second = status.compute_status(make_job(status_=first), pod({"running": {}}), {}, later)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Ready"] == status.format_time(NOW)  # still False
    assert times["Admitted"] == status.format_time(NOW)  # still True
    third = status.compute_status(
        make_job(status_=second), pod(exited(137, "OOMKilled"), phase="Failed"), {}, later
    )
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times["Ready"] == status.format_time(NOW)  # False before and after
    assert times["Failed"] == status.format_time(later)
    assert times["Finished"] == status.format_time(later)
    assert times["Stalled"] == status.format_time(later)  # new
    assert "Reconciling" not in times  # abnormal-true: dropped once False
    assert times["Admitted"] == status.format_time(NOW)


def test_status_changed_detects_only_real_changes() -> None:
    first = status.compute_status(make_job(), pod(phase="Pending"), {}, NOW)
    again = status.compute_status(
        make_job(status_=first), pod(phase="Pending"), {}, NOW + datetime.timedelta(1)
    )
    assert not status.status_changed(first, again)
    assert status.status_changed(
        first, status.compute_status(make_job(status_=first), pod({"running": {}}), {}, NOW)
    )


@pytest.mark.parametrize(
    ("text", "limit", "clipped"),
    [("short", 100, False), ("a" * 1000, 300, True), ("é" * 1000, 300, True)],
)
def test_clip_stream_respects_the_byte_budget(text: str, limit: int, clipped: bool) -> None:
    out, cut = status.clip_stream(text, limit)
    assert cut is clipped
    assert len(out.encode()) <= max(limit, len(text.encode()) if not clipped else limit)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (7380, "2h03m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert status.format_duration(seconds) == text


def test_default_job_type_is_usable_for_status_paths() -> None:
    # the built-in default type builds a job.json the runner accepts
    config = builders.runner_config(make_job(), DEFAULT_JOB_TYPE, SETTINGS)
    assert config["timeout"] == 30


# --- the etcd budget (docs/crds.md states these numbers) ---------------------------------------------

WORST_CASE_STATUS_BYTES = 60_000


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_worst_case_status_fits_the_documented_budget() -> None:
    """Every field at its cap (streams of multi-byte text, output just under its cap, 100 artifacts with
    maximal names): the status stays under WORST_CASE_STATUS_BYTES and within the CRD."""
    from tako_runner.outcome import Outcome

    worst = Outcome(
        status="failed", exit_code=1, stdout="é" * 100_000, stderr="x" * 100_000,
        stdout_truncated=True, stderr_truncated=True, output={"b": "y" * 16_000},
        error={"type": "runtime_error", "message": "m" * 10_000, "phase": "execution"},
        timing={"startup_ms": 1, "dep_install_ms": 1, "execution_ms": 1, "total_ms": 1,
                "phase_at_exit": "failed"},
        artifacts=[{"name": f"{i:03d}" + "n" * 252, "size_bytes": 10**7, "sha256": "a" * 64,
                    "content_type": "c" * 300} for i in range(100)],
        runtime="gvisor",
    )  # fmt: skip
    fields = status.outcome_fields(worst, SETTINGS)
    fields.update(podName="p" * 253, startedAt=STARTED, finishedAt=FINISHED, duration="59m59s", attempts=3,
                  queuedAt=STARTED, message="z" * 5000)  # fmt: skip
    result = check_valid(status._finish(make_job(), fields, NOW))
    assert _json_bytes(result) <= WORST_CASE_STATUS_BYTES
    assert len(result["artifacts"]) == 32
    assert result["artifactsOmitted"] == 68


def test_typical_status_is_small(tmp_path: pathlib.Path) -> None:
    job = make_job(code="print('hello from gVisor')\n")
    log = run_real_runner(tmp_path, job)
    result = check_valid(status.compute_status(job, pod(exited(0), phase="Succeeded"), {"job": log}, NOW))
    assert _json_bytes(result) <= 2_000


@given(text=st.text(max_size=3000), limit=st.integers(min_value=256, max_value=2000))
def test_clip_stream_never_exceeds_its_budget(text: str, limit: int) -> None:
    out, cut = status.clip_stream(text, limit)
    assert len(out.encode()) <= limit
    assert cut == (len(text.encode()) > limit)
    if not cut:
        assert out == text
