"""The whole path with real parts: SDK (`tako_vm`) -> shim server process (kubernetes backend) ->
PythonJob in kmock -> operator (kopf) -> Pod -> node agent -> gVisor (runsc) -> Pod log and status ->
operator -> PythonJob status -> the shim's watch -> SDK.

Only the kubelet is played by a test-only component (tests/nodeagent/agent.py, which runs each Pod in
runsc); the shim is the real `python -m tako_shim` process with `backend: kubernetes`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube_harness import KubeHarness

import tako_vm
from tako_vm.testing import LocalServer, local_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nodeagent.agent import NodeAgent, runsc_problem

problem = runsc_problem()
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(problem is not None, reason=f"needs runsc: {problem}"),
]


@pytest.fixture
def node(kube: KubeHarness, tmp_path: Path) -> Iterator[NodeAgent]:
    with NodeAgent(kube, tmp_path / "node") as agent:
        yield agent


@pytest.fixture
def shim(kube: KubeHarness, tmp_path: Path) -> Iterator[LocalServer]:
    settings = {
        "backend": "kubernetes",
        "api_rate_limit_enabled": False,
        "kubernetes": {"namespace": kube.namespace, "kubeconfig": str(kube.kubeconfig(tmp_path))},
    }
    with local_server(tmp_path / "shim", settings) as server:
        yield server


@pytest.fixture
def sdk(shim: LocalServer) -> Iterator[None]:
    tako_vm.configure(base_url=shim.url, timeout=60)
    yield
    tako_vm.configure()


def test_sdk_gets_stdout_traceback_and_timeout_through_the_cluster(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, sdk: None
) -> None:
    run_operator()
    ok = tako_vm.submit_code(
        "import json, os\nprint('hello from', os.uname().sysname)\n"
        "data = json.load(open('/input/data.json'))\n"
        "json.dump({'sum': sum(data['xs'])}, open('/output/result.json', 'w'))\n",
        {"xs": [1, 2, 3]},
        timeout=60,
    )
    failing = tako_vm.submit_code("def f():\n    return 1 / 0\nf()\n", timeout=60)
    sleeping = tako_vm.submit_code("import time\ntime.sleep(60)\n", timeout=2)

    record = tako_vm.get_result(ok, timeout=150)
    assert record["status"] == "succeeded", record
    assert record["stdout"] == "hello from Linux\n" and record["output"] == {"sum": 6}
    assert record["exit_code"] == 0 and record["runtime"] == "gvisor"

    failed = tako_vm.get_result(failing, timeout=150)
    assert failed["status"] == "failed" and failed["exit_code"] == 1, failed
    assert "Traceback (most recent call last)" in failed["stderr"]
    assert "ZeroDivisionError" in failed["stderr"]

    slow = tako_vm.get_result(sleeping, timeout=150)
    assert slow["status"] == "timeout", slow
    assert slow["error"]["type"] == "execution_timeout"

    assert {ok, failing, sleeping} <= {job["metadata"]["name"] for job in kube.list("pythonjobs")}
    assert tako_vm.get_status(ok)["status"] == "succeeded"
    history = tako_vm.list_executions(limit=10)
    assert {item["execution_id"] for item in history["items"]} >= {ok, failing, sleeping}


def test_live_output_streams_from_the_pod_log_with_stdout_and_stderr_apart(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, sdk: None
) -> None:
    """GET /jobs/{id}/events on the kubernetes backend: the shim follows the job Pod's log (served as it is
    written by the node agent) and splits the runner's live lines into stdout and stderr events."""
    run_operator()
    job = tako_vm.submit_code(
        "import sys, time\nfor i in range(4):\n    print('tick', i)\n    print('warn', i, file=sys.stderr)\n"
        "    time.sleep(1)\n",
        timeout=60,
    )
    events = list(tako_vm.stream(job))
    result = events[-1]
    assert isinstance(result, tako_vm.ResultEvent) and result.status == "succeeded", events
    stdout = [e for e in events if isinstance(e, tako_vm.OutputEvent) and e.type == "stdout"]
    stderr = [e for e in events if isinstance(e, tako_vm.OutputEvent) and e.type == "stderr"]
    assert len(stdout) >= 3, [e.type for e in events]  # chunks while it ran, not one block at the end
    assert "".join(e.text for e in stdout) == "tick 0\ntick 1\ntick 2\ntick 3\n" == result.record["stdout"]
    assert "".join(e.text for e in stderr) == "warn 0\nwarn 1\nwarn 2\nwarn 3\n"
    assert [e.status for e in events if isinstance(e, tako_vm.StatusEvent)][-1] == "succeeded"


def test_live_output_resumes_on_another_replica_with_last_event_id(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, shim: LocalServer, tmp_path: Path
) -> None:
    """Issue #13 on the kubernetes backend: a client that loses its stream on one shim replica and
    reconnects to another with ``Last-Event-ID`` gets the rest of the output, nothing lost, nothing twice
    (event ids come from the Pod's log, not from a replica's memory)."""
    from test_events import TICKER, read_events, text_of

    run_operator()
    settings = {
        "backend": "kubernetes",
        "api_rate_limit_enabled": False,
        "kubernetes": {"namespace": kube.namespace, "kubeconfig": str(kube.kubeconfig(tmp_path))},
    }
    with local_server(tmp_path / "shim-2", settings) as other:
        job = httpx.post(f"{shim.url}/execute/async", json={"code": TICKER, "timeout": 60}, timeout=30)
        assert job.status_code == 200, job.text
        job_id = job.json()["job_id"]
        first = read_events(shim, job_id, stop_after=3)  # running + output so far, then the client drops
        assert any(e["event"] == "stdout" for e in first), first
        rest = read_events(other, job_id, last_event_id=first[-1]["id"])
    record = rest[-1]["data"]
    assert rest[-1]["event"] == "result" and record["status"] == "succeeded", rest
    assert (
        text_of(first, "stdout") + text_of(rest, "stdout")
        == record["stdout"]
        == ("tick 0\ntick 1\ntick 2\ntick 3\n")
    )
    assert text_of(first, "stderr") + text_of(rest, "stderr") == record["stderr"] == "bye\n"
    assert not {e["id"] for e in first} & {e["id"] for e in rest}
