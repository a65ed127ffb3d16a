"""Sessions on the kubernetes backend, end to end with real gVisor: the shim (aiohttp, kubernetes backend)
-> PythonSession in kmock -> the real operator (kopf) -> session Pod, Secret and NetworkPolicy -> the
test node agent runs the Pod in runsc with a Pod network (tests/nodeagent/agent.py) -> the shim posts
code to the session server in the sandbox over that network.

What kmock and the node agent cannot show (and where it is covered instead): NetworkPolicies are not
enforced (a CNI's job; the policy's shape is pinned by tests/unit/test_sessions_kube.py) and owner
references are not garbage-collected (the operator deletes a session's objects itself, tested here).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from kube_harness import KubeHarness

from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.http.app import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nodeagent.agent import NodeAgent, runsc_problem

problem = runsc_problem()
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(problem is not None, reason=f"needs runsc: {problem}"),
]
KEY_A = "tenant-a-key-0123456789"
KEY_B = "tenant-b-key-0123456789"
CALL_TIMEOUT = 180.0  # a first call waits for the Pod to start in gVisor


@pytest.fixture
def node(kube: KubeHarness, tmp_path: Path) -> Any:
    with NodeAgent(kube, tmp_path / "node") as agent:
        yield agent


class Shim:
    def __init__(self, server: TestServer, headers: dict[str, str]) -> None:
        self.server = server
        url = str(server.make_url(""))
        self.http = httpx.AsyncClient(base_url=url, timeout=CALL_TIMEOUT, headers=headers)

    async def new(self, **body: Any) -> str:
        response = await self.http.post("/sessions", json=body)
        assert response.status_code == 201, response.text
        session_id: str = response.json()["session_id"]
        return session_id

    async def run(self, session_id: str, code: str, **body: Any) -> dict[str, Any]:
        response = await self.http.post(f"/sessions/{session_id}/execute", json={"code": code, **body})
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        return reply


@pytest.fixture
async def start_shim(kube: KubeHarness, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Shim]]]:
    started: list[Shim] = []

    async def start(headers: dict[str, str] | None = None, **overrides: Any) -> Shim:
        settings = Settings(
            backend="kubernetes",
            api_rate_limit_enabled=False,
            kubernetes=KubernetesOptions(
                namespace=kube.namespace,
                kubeconfig=str(kube.kubeconfig(tmp_path)),
                tenant_namespaces=overrides.pop("tenant_namespaces", {}),
            ),
            data_dir=tmp_path / "unused-data-dir",
            **overrides,
        )
        server = TestServer(create_app(settings, KubernetesBackend(settings)), host="127.0.0.1")
        await server.start_server()
        shim = Shim(server, headers or {})
        started.append(shim)
        return shim

    yield start
    for shim in started:
        await shim.http.aclose()
        await shim.server.close()


async def until(check: Callable[[], Any], seconds: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check`` without blocking the event loop (the shim under test runs on it)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(0.2)


def status_where(kube: KubeHarness, name: str, **fields: Any) -> dict[str, Any] | None:
    """The PythonSession once its status has every field in ``fields`` (else None)."""
    obj = kube.get("pythonsessions", name)
    status = (obj or {}).get("status") or {}
    return obj if obj and all(status.get(k) == v for k, v in fields.items()) else None


def session_events(kube: KubeHarness, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in kube.list("events")
        if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason
    ]


async def test_state_is_kept_across_calls_and_each_execution_is_visible_in_the_cluster(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    created = (await shim.http.post("/sessions", json={"ttl_seconds": 600})).json()
    assert created["status"] == "starting"
    sid = created["session_id"]
    first = await shim.run(
        sid,
        "import math\nx = 40\ndef f(v):\n    return v + 2\nclass K:\n    n = 1\n"
        "open('notes.txt', 'w').write('kept')\nprint('hi')",
    )
    assert (first["status"], first["stdout"], first["result"]) == ("succeeded", "hi\n", None)
    second = await shim.run(sid, "f(x), K.n, open('notes.txt').read(), round(math.pi, 2)")
    assert second["status"] == "succeeded", second
    assert second["result"] == "(42, 1, 'kept', 3.14)"

    info = (await shim.http.get(f"/sessions/{sid}")).json()
    assert (info["status"], info["executions"], info["runtime"]) == ("ready", 2, "gvisor")
    stored = await until(lambda: status_where(kube, sid, executions=2), what="status.executions == 2")
    status = stored["status"]
    assert status["phase"] == "Ready"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["lastActivityTime"] and status["expiresAt"]
    assert len(session_events(kube, sid, "Executed")) == 2, "one Event per execution"
    pod = kube.get("pods", f"{sid}-session")
    assert pod is not None and pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["automountServiceAccountToken"] is False
    policy = kube.get("networkpolicies", f"{sid}-session")
    assert policy is not None and policy["spec"]["egress"] == []
