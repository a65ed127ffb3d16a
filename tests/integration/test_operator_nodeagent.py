"""The full path with real sandboxes: PythonJob -> operator (kopf) -> Pod -> node agent -> gVisor ->
Pod status and log -> operator -> PythonJob status.

The node agent (tests/nodeagent/agent.py) stands in for the kubelet: it runs each Pod's containers in
`runsc` with the Pod's volumes, user, limits and deadline. Images are not pulled: the sandbox uses the
host's /usr (Debian's python3), which is what the local backend does too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kube_harness import KubeHarness
from operator_support import sample_job, wait_phase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nodeagent.agent import NodeAgent, runsc_problem

problem = runsc_problem()
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(problem is not None, reason=f"needs runsc: {problem}"),
]


@pytest.fixture
def node(kube: KubeHarness, tmp_path: Path) -> Any:
    with NodeAgent(kube, tmp_path / "node") as agent:
        yield agent


def test_full_path_success_failure_timeout(kube: KubeHarness, run_operator: Any, node: NodeAgent) -> None:
    run_operator()
    code_ok = (
        "import json, os\nprint('hello from', os.uname().sysname)\n"
        "xs = json.load(open('/input/data.json'))['xs']\n"
        "json.dump({'sum': sum(xs)}, open('/output/result.json', 'w'))\n"
    )
    kube.create("pythonjobs", sample_job("e2e-ok", code=code_ok, inputData={"xs": [1, 2, 3]}))
    kube.create("pythonjobs", sample_job("e2e-fail", code="import nosuchmodule\n"))
    kube.create("pythonjobs", sample_job("e2e-slow", code="import time\ntime.sleep(60)\n", timeoutSeconds=2))

    ok = wait_phase(kube, "e2e-ok", "Succeeded", timeout=120)["status"]
    assert ok["stdout"] == "hello from Linux\n"
    assert ok["output"] == {"sum": 6}
    assert ok["exitCode"] == 0
    assert ok["runtime"] == "gvisor"

    failed = wait_phase(kube, "e2e-fail", "Failed", timeout=120)["status"]
    assert failed["error"]["type"] == "import_error"
    assert "nosuchmodule" in failed["stderr"]

    slow = wait_phase(kube, "e2e-slow", "Timeout", timeout=120)["status"]
    assert slow["error"]["type"] == "execution_timeout"
    assert kube.creations("pods") == 3


def test_sandbox_is_gvisor_without_network_and_non_root(
    kube: KubeHarness, run_operator: Any, node: NodeAgent
) -> None:
    run_operator()
    probe = (
        "import os, socket\n"
        "print(os.getuid())\n"
        "print(open('/proc/version').read().split()[2])\n"
        "s = socket.socket(); s.settimeout(2)\n"
        "try:\n    s.connect(('1.1.1.1', 443)); print('net: open')\n"
        "except OSError as e:\n    print('net: closed')\n"
        "try:\n    open('/usr/x', 'w'); print('rootfs: writable')\n"
        "except OSError:\n    print('rootfs: read-only')\n"
    )
    kube.create("pythonjobs", sample_job("probe", code=probe))
    lines = wait_phase(kube, "probe", "Succeeded", timeout=120)["status"]["stdout"].splitlines()
    assert lines[0] == "1000"
    assert lines[1] == "4.4.0", "the gVisor kernel, not the host's"
    assert lines[2:] == ["net: closed", "rootfs: read-only"]
