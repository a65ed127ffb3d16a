"""End to end on a real cluster: kind + gVisor (runsc) + Calico, the chart installed from this tree.

Opt-in: `TAKO_E2E=1 pytest tests/e2e` (docs/e2e.md). The session fixture runs tests/e2e/kind-up.sh
(create the cluster, install gVisor and Calico, build and load both images, `helm upgrade --install`),
unless TAKO_E2E_REUSE=1; the cluster is deleted afterwards unless TAKO_E2E_KEEP=1.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "crds" / "samples"
CLUSTER = os.environ.get("KIND_CLUSTER", "tako-vm-e2e")
RELEASE_NAMESPACE = os.environ.get("TAKO_E2E_NAMESPACE", "tako-system")
JOBS = "tako-jobs"  # the chart's default job namespace
STATE = pathlib.Path(os.environ.get("TAKO_E2E_STATE", "/tmp"))


def missing_prerequisites() -> list[str]:
    missing = [tool for tool in ("docker", "kind", "kubectl", "helm") if shutil.which(tool) is None]
    if "docker" not in missing:
        engine = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
        if engine.returncode != 0:
            missing.insert(0, "a running Docker engine")
    return missing


MISSING = missing_prerequisites()

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"needs a Docker engine and kind: {', '.join(MISSING)} not found here (docs/e2e.md)",
    ),
    pytest.mark.skipif(
        os.environ.get("TAKO_E2E") != "1",
        reason="opt-in: set TAKO_E2E=1 to create a kind cluster (docs/e2e.md)",
    ),
]

# sample -> what `kubectl wait` must see; in apply order (job types and ConfigMaps first, parents first).
EXPECTED: list[tuple[str, list[str]]] = [
    ("jobtype-default", []),
    ("jobtype-data-science", []),
    ("large-code-configmap", []),
    (
        "hello",
        [
            "condition=Ready",
            "condition=Finished",
            "condition=Succeeded",
            "jsonpath={.status.phase}=Succeeded",
        ],
    ),
    ("with-input", ["condition=Succeeded"]),
    ("rerun", ["condition=Succeeded"]),
    ("large-code", ["condition=Succeeded"]),
    ("with-requirements", ["condition=Succeeded"]),
    (
        "failing",
        [
            "condition=Finished",
            "condition=Stalled",
            "condition=Failed",
            "jsonpath={.status.error.type}=name_error",
        ],
    ),
    ("timeout", ["condition=Failed", "jsonpath={.status.phase}=Timeout"]),
    ("oom", ["condition=Failed", "jsonpath={.status.phase}=OOM"]),
    ("cancel", ["condition=Finished", "condition=Stalled", "jsonpath={.status.phase}=Cancelled"]),
]

# Sample job types name images from an example registry; on kind they run on the default job image.
IMAGE_OVERRIDES = {"data-science": "python:3.11-slim"}

EGRESS_PROBE = """
import socket
targets = [("1.1.1.1", 443), ("8.8.8.8", 53), ("kubernetes.default.svc", 443), ("pypi.org", 443)]
opened = []
for host, port in targets:
    try:
        socket.create_connection((host, port), timeout=5).close()
        opened.append(f"{host}:{port}")
    except OSError as exc:
        print(f"blocked {host}:{port}: {type(exc).__name__}")
if opened:
    raise SystemExit("egress open to " + ", ".join(opened))
print("all egress blocked")
"""


def kubectl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", f"--context=kind-{CLUSTER}", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    if os.environ.get("TAKO_E2E_REUSE") != "1":
        env = {**os.environ, "TAKO_E2E_STATE": str(STATE)}
        subprocess.run(
            ["bash", str(ROOT / "tests" / "e2e" / "kind-up.sh")], check=True, env=env, timeout=1800
        )
    yield CLUSTER
    if os.environ.get("TAKO_E2E_KEEP") != "1":
        subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False, timeout=300)


@pytest.fixture(scope="session")
def api(cluster: str) -> Iterator[tuple[str, str]]:
    """The shim through `kubectl port-forward`, and the API key the install used."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forward = subprocess.Popen(
        [
            "kubectl",
            f"--context=kind-{cluster}",
            "-n",
            RELEASE_NAMESPACE,
            "port-forward",
            "svc/tako-tako-vm-shim",
            f"{port}:8000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", (STATE / "tako-e2e-api-key").read_text().strip()
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def sample_names(name: str) -> list[tuple[str, str]]:
    docs = [d for d in yaml.safe_load_all((SAMPLES / f"{name}.yaml").read_text()) if d]
    return [(d["kind"].lower(), d["metadata"]["name"]) for d in docs]


@pytest.mark.parametrize(("sample", "conditions"), EXPECTED, ids=[name for name, _ in EXPECTED])
def test_apply_sample_and_wait(cluster: str, sample: str, conditions: list[str]) -> None:
    kubectl("apply", "-n", JOBS, "-f", str(SAMPLES / f"{sample}.yaml"))
    for kind, name in sample_names(sample):
        kubectl("get", "-n", JOBS, f"{kind}/{name}")
        if kind == "pythonjobtype" and name in IMAGE_OVERRIDES:
            patch = json.dumps({"spec": {"image": IMAGE_OVERRIDES[name]}})
            kubectl("patch", "-n", JOBS, f"{kind}/{name}", "--type=merge", "-p", patch)
        for condition in conditions:
            kubectl("wait", "-n", JOBS, f"--for={condition}", f"{kind}/{name}", "--timeout=300s", timeout=330)


def test_every_sample_is_covered() -> None:
    assert {p.stem for p in SAMPLES.glob("*.yaml")} == {name for name, _ in EXPECTED}


@pytest.mark.parametrize("invalid", sorted((SAMPLES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_api_server_rejects_invalid_samples(cluster: str, invalid: pathlib.Path) -> None:
    result = kubectl("apply", "-n", JOBS, "-f", str(invalid), check=False)
    assert result.returncode != 0
    assert "invalid" in result.stderr.lower() or "unknown field" in result.stderr.lower()


def test_network_egress_from_a_job_fails(cluster: str, tmp_path: pathlib.Path) -> None:
    job: dict[str, Any] = {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": "egress-probe", "namespace": JOBS},
        "spec": {"code": EGRESS_PROBE, "timeoutSeconds": 60},
    }
    path = tmp_path / "egress.json"
    path.write_text(json.dumps(job))
    kubectl("apply", "-f", str(path))
    kubectl(
        "wait", "-n", JOBS, "--for=condition=Ready", "pythonjob/egress-probe", "--timeout=300s", timeout=330
    )
    status = json.loads(kubectl("get", "-n", JOBS, "pythonjob/egress-probe", "-o", "json").stdout)["status"]
    assert status["phase"] == "Succeeded", status.get("stderr")
    assert "all egress blocked" in status["stdout"]


def test_job_pods_run_in_the_gvisor_kernel(cluster: str, tmp_path: pathlib.Path) -> None:
    """gVisor's Sentry reports its own kernel release (4.4.0), not the node's."""
    job = {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {"name": "kernel-probe", "namespace": JOBS},
        "spec": {"code": "import platform\nprint(platform.release())\n"},
    }
    path = tmp_path / "kernel.json"
    path.write_text(json.dumps(job))
    kubectl("apply", "-f", str(path))
    kubectl(
        "wait",
        "-n",
        JOBS,
        "--for=condition=Succeeded",
        "pythonjob/kernel-probe",
        "--timeout=300s",
        timeout=330,
    )
    status = json.loads(kubectl("get", "-n", JOBS, "pythonjob/kernel-probe", "-o", "json").stdout)["status"]
    assert status["stdout"].strip() == "4.4.0"


@pytest.fixture(scope="module")
def seed(api: tuple[str, str]) -> Iterator[ModuleType]:
    import tako_vm

    url, key = api
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        sys.modules.pop("run_python_tool", None)
        module = importlib.import_module("run_python_tool")  # the seed snippet, verbatim
        tako_vm.configure(url, headers={"X-API-Key": key})
        yield module
    finally:
        sys.path.remove(str(ROOT / "examples"))
        tako_vm.configure()


def test_seed_snippet_runs_against_the_cluster(seed: ModuleType) -> None:
    fib50 = "a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)\n"
    assert seed.run_python(fib50) == "12586269025\n"
    assert seed.run_python("print(1/0)").startswith("Execution failed.")


def test_the_shim_refuses_requests_without_an_api_key(api: tuple[str, str]) -> None:
    import httpx

    url, _ = api
    response = httpx.post(f"{url}/execute", json={"code": "print(1)"}, timeout=30)
    assert response.status_code == 401
