"""Compatibility: the reference SDK, PyPI `tako-vm==0.3.0`, drives OUR server unchanged.

The reference package (import name also `tako_vm`) lives in its own venv, `.venv-ref/` (created
on first run with `pip install tako-vm==0.3.0`, then reused; ignored by git). Each test runs one
scenario of DRIVER in that venv against a real server process (local backend, runsc sandboxes)
and asserts on the JSON the scenario prints. If PyPI is unreachable the suite is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_server import ROOT, needs_runsc, strict_server

from tako_vm.testing import LocalServer

REF_VENV = ROOT / ".venv-ref"
REF_PYTHON = REF_VENV / "bin" / "python"
REF_VERSION = "0.3.0"
API_KEY = "compat-suite-key-0123456789"

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,  # each scenario starts an interpreter that imports the reference package (~2 s)
    needs_runsc,
]

# Runs inside .venv-ref with the REFERENCE SDK: `python driver.py SCENARIO URL [API_KEY]`.
DRIVER = r"""
import json, sys, time
import tako_vm

FIB50 = "a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)\n"
from dataclasses import dataclass


@dataclass
class Rect:
    width: float
    height: float


@dataclass
class Area:
    area: float


def area(rect: Rect) -> Area:
    if rect.width < 0:
        raise ValueError("negative width")
    return Area(rect.width * rect.height)


scenario, url = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else None
tako_vm.configure(url, headers={"X-API-Key": key} if key else None)
out = {}

def error(fn):
    try:
        fn()
    except Exception as exc:
        return {"class": type(exc).__name__, "status_code": getattr(exc, "status_code", None),
                "detail": str(getattr(exc, "detail", exc))}
    return None

if scenario == "submit_and_wait":
    job_id = tako_vm.submit_code(FIB50, timeout=60)
    out["record"] = tako_vm.get_result(job_id, timeout=120)
    out["job_id"] = job_id
    out["status"] = tako_vm.get_status(job_id)
elif scenario == "result_without_wait":
    job_id = tako_vm.submit_code("import time\ntime.sleep(2)\nprint('late')", timeout=60)
    out["early"] = tako_vm.get_result(job_id)
    out["final"] = tako_vm.get_result(job_id, timeout=60)
elif scenario == "history":
    job_id = tako_vm.submit_code("print('hist')", {"k": 1}, timeout=60)
    tako_vm.get_result(job_id, timeout=120)
    out["job_id"] = job_id
    out["page"] = tako_vm.list_executions(limit=5)
    out["filtered"] = tako_vm.list_executions(status="succeeded", limit=1000)
    out["one"] = tako_vm.get_execution(job_id)
    out["full"] = tako_vm.get_execution(job_id, view="full")
elif scenario == "rerun_fork":
    show_x = "import json\nprint(json.load(open('/input/data.json'))['x'])"
    parent = tako_vm.submit_code(show_x, {"x": 3}, timeout=60)
    tako_vm.get_result(parent, timeout=120)
    rerun = tako_vm.rerun(parent)
    fork = tako_vm.fork(parent, "import json\nprint(json.load(open('/input/data.json'))['x'] + 1)")
    out.update(parent=parent, rerun=rerun, fork=fork)
    out["rerun_record"] = tako_vm.get_result(rerun, timeout=120, view="full")
    out["fork_record"] = tako_vm.get_result(fork, timeout=120, view="full")
elif scenario == "cancel":
    job_id = tako_vm.submit_code("import time\ntime.sleep(60)", timeout=120)
    deadline = time.time() + 30
    while tako_vm.get_status(job_id)["status"] != "running" and time.time() < deadline:
        time.sleep(0.1)
    out["cancel"] = tako_vm.cancel(job_id)
    out["job_id"] = job_id
    out["record"] = tako_vm.get_result(job_id, timeout=60)
    out["again"] = error(lambda: tako_vm.cancel(job_id))
elif scenario == "idempotency":
    first = tako_vm.submit_code("print('once')", timeout=30, idempotency_key="compat-key-0001")
    second = tako_vm.submit_code("print('once')", timeout=30, idempotency_key="compat-key-0001")
    out.update(first=first, second=second)
    out["conflict"] = error(lambda: tako_vm.submit_code("print('other')", timeout=30,
                                                        idempotency_key="compat-key-0001"))
    out["record"] = tako_vm.get_result(first, timeout=120)
elif scenario == "auth":
    out["health"] = tako_vm.health()["status"]
    out["denied"] = error(lambda: tako_vm.submit_code("print(1)", timeout=30))
elif scenario == "auth_with_key":
    job_id = tako_vm.submit_code("print('authorised')", timeout=30)
    out["record"] = tako_vm.get_result(job_id, timeout=120)
    tako_vm.configure(url, headers={"Authorization": "Bearer " + key})
    out["bearer"] = tako_vm.get_status(job_id)["status"]
elif scenario == "typed_and_server_info":
    result = tako_vm.send(area, Rect(3.0, 4.5), timeout=30)
    out["send"] = {"type": type(result).__name__, "area": result.area}
    raw = tako_vm.send_raw(area, Rect(-1.0, 2.0), timeout=30)
    out["send_raw"] = {"success": raw.success, "stderr": raw.stderr}
    out["health"] = tako_vm.health()
    out["pool"] = tako_vm.pool_stats()
    out["job_types"] = tako_vm.list_job_types()
    out["missing"] = error(lambda: tako_vm.get_status("no-such-job"))
else:
    raise SystemExit("unknown scenario " + scenario)
print(json.dumps(out))
"""


def _reference_python() -> Path:
    """The reference SDK's interpreter, creating `.venv-ref` once; skips if PyPI is unreachable."""
    check = [str(REF_PYTHON), "-c", "import importlib.metadata as m; print(m.version('tako-vm'))"]
    if REF_PYTHON.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.stdout.strip() == REF_VERSION:
            return REF_PYTHON
    created = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(REF_VENV)], capture_output=True, text=True
    )
    if created.returncode != 0:
        pytest.skip(f"cannot create {REF_VENV}: {created.stderr[-500:]}")
    pip = [str(REF_PYTHON), "-m", "pip", "install", "-q", f"tako-vm=={REF_VERSION}"]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.skip(f"PyPI unreachable or tako-vm=={REF_VERSION} not installable: {installed.stderr[-800:]}")
    return REF_PYTHON


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    driver = tmp_path_factory.mktemp("reference-driver") / "driver.py"
    driver.write_text(DRIVER)
    return _reference_python(), driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(tmp_path_factory, "ref-server") as running:
        yield running


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(
        tmp_path_factory, "ref-auth-server", max_workers=1, api_auth_enabled=True, api_keys=[API_KEY]
    ) as running:
        yield running


def drive(reference: tuple[Path, Path], scenario: str, url: str, key: str | None = None) -> dict[str, Any]:
    python, driver = reference
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    argv = [str(python), str(driver), scenario, url, *([key] if key else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, cwd=driver.parent)
    assert done.returncode == 0, f"reference SDK scenario {scenario} failed:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_reference_sdk_is_the_real_0_3_0(reference: tuple[Path, Path]) -> None:
    python, _ = reference
    probe = "import tako_vm, importlib.metadata as m; print(m.version('tako-vm'), tako_vm.__file__)"
    shown = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout
    version, location = shown.split()
    assert version == REF_VERSION and str(REF_VENV) in location and "client/tako_vm" not in location


def test_submit_code_and_get_result_with_wait(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "submit_and_wait", server.url)
    assert out["record"]["status"] == "succeeded" and out["record"]["stdout"] == "12586269025\n"
    assert out["record"]["execution_id"] == out["job_id"]
    assert out["status"]["job_id"] == out["job_id"] and out["status"]["status"] == "succeeded"


def test_get_result_without_wait_returns_the_unfinished_record(
    reference: tuple[Path, Path], server: LocalServer
) -> None:
    out = drive(reference, "result_without_wait", server.url)
    assert out["early"]["status"] in {"queued", "running"} and out["early"]["exit_code"] is None
    assert out["final"]["status"] == "succeeded" and out["final"]["stdout"] == "late\n"


def test_list_executions_and_get_execution(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "history", server.url)
    page = out["page"]
    assert set(page) >= {"items", "limit", "offset", "has_more", "count"} and page["limit"] == 5
    assert page["count"] == len(page["items"]) <= 5
    assert out["job_id"] in {item["execution_id"] for item in out["filtered"]["items"]}
    assert out["one"]["execution_id"] == out["job_id"] and out["one"]["stdout"] == "hist\n"
    assert "artifacts" not in out["one"]
    assert out["full"]["code_hash"] and "artifacts" in out["full"] and out["full"]["relationship"] is None


def test_rerun_and_fork(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "rerun_fork", server.url)
    assert len({out["parent"], out["rerun"], out["fork"]}) == 3
    assert out["rerun_record"]["stdout"] == "3\n" and out["rerun_record"]["relationship"] == "rerun"
    assert out["fork_record"]["stdout"] == "4\n" and out["fork_record"]["relationship"] == "fork"
    assert out["fork_record"]["parent_execution_id"] == out["parent"]


def test_cancel(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "cancel", server.url)
    assert out["cancel"] == {"status": "cancelled", "job_id": out["job_id"]}
    assert out["record"]["status"] == "cancelled"
    assert out["again"] is not None and out["again"]["status_code"] == 404


def test_idempotent_replay_and_409_on_a_reused_key(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "idempotency", server.url)
    assert out["first"] == out["second"]
    assert out["conflict"] is not None and out["conflict"]["status_code"] == 409
    assert out["conflict"]["class"] == "ClientError"
    assert "Idempotency key reused with different payload" in out["conflict"]["detail"]
    assert out["record"]["stdout"] == "once\n"


def test_401_without_a_key_when_auth_is_on(reference: tuple[Path, Path], auth_server: LocalServer) -> None:
    out = drive(reference, "auth", auth_server.url)
    assert out["health"] == "healthy"  # /health is exempt from auth
    assert out["denied"] is not None and out["denied"]["status_code"] == 401
    assert (
        out["denied"]["class"] == "ClientError" and "Missing or invalid API key." in out["denied"]["detail"]
    )
    authorised = drive(reference, "auth_with_key", auth_server.url, API_KEY)
    assert authorised["record"]["stdout"] == "authorised\n" and authorised["bearer"] == "succeeded"


def test_typed_send_and_server_info(reference: tuple[Path, Path], server: LocalServer) -> None:
    out = drive(reference, "typed_and_server_info", server.url)
    assert out["send"] == {"type": "Area", "area": 13.5}
    assert out["send_raw"]["success"] is False and "ValueError: negative width" in out["send_raw"]["stderr"]
    assert out["health"]["status"] == "healthy" and out["health"]["gvisor_available"] is True
    assert set(out["pool"]) >= {"pending", "running", "max_workers", "max_queue_size"}
    assert isinstance(out["job_types"], list)
    assert out["missing"] is not None and out["missing"]["status_code"] == 404
