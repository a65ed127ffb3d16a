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
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from chart_support import Enforcer, operator_grants, render, shim_grants
from kube_harness import KubeHarness
from operator_support import OperatorThread
from status_readers import kstatus, kubectl_wait_met

from tako_operator.main import OperatorOptions
from tako_operator.settings import settings_from_env
from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.http.app import create_app
from tako_shim.http.common import BACKEND_KEY

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
SESSION_KEY = "k" * 48
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
            session_token_key=overrides.pop("session_token_key", SESSION_KEY),  # shared by the replicas
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


PIP_JOB_TYPE = {
    "apiVersion": "takovm.dev/v1alpha1",
    "kind": "PythonJobType",
    "metadata": {"name": "pip"},
    "spec": {"image": "python:3.11-slim", "allowRuntimeRequirements": True, "startupTimeoutSeconds": 180},
}


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
    assert status["observedGeneration"] == stored["metadata"]["generation"]
    assert kstatus(stored) == "Current" and kubectl_wait_met(stored, "Ready")
    assert len(session_events(kube, sid, "Executed")) == 2, "one Event per execution"
    page = await shim.http.get(f"/console/sessions/{sid}")  # its executions in order, with their code
    assert page.status_code == 200, page.text
    cells = re.findall(r'<li class="cell" data-id="([^"]+)"', page.text)
    assert cells == [first["execution_id"], second["execution_id"]], "the records, oldest first"
    assert "Out[2]:</span> (42, 1, &#39;kept&#39;, 3.14)" in page.text and "notes" in page.text
    pod = kube.get("pods", f"{sid}-session")
    assert pod is not None and pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["automountServiceAccountToken"] is False
    policy = kube.get("networkpolicies", f"{sid}-session")
    assert policy is not None and policy["spec"]["egress"] == []


def tenants(kube: KubeHarness) -> dict[str, Any]:
    """Two tenants in one namespace: only the session's tenant annotation keeps them apart."""
    return {
        "api_auth_enabled": True,
        "api_keys": {KEY_A: "tenant-a", KEY_B: "tenant-b"},
        "tenant_namespaces": {"tenant-a": kube.namespace, "tenant-b": kube.namespace},
    }


async def test_sessions_are_isolated_other_tenants_get_404_and_any_replica_serves_a_session(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    a = await start_shim(headers={"X-API-Key": KEY_A}, **tenants(kube))
    a2 = await start_shim(headers={"X-API-Key": KEY_A}, **tenants(kube))  # a second replica
    b = await start_shim(headers={"X-API-Key": KEY_B}, **tenants(kube))
    one, two = await a.new(), await a.new()
    assert (await a.run(one, "secret = 'one'\nimport os\nos.getpid()"))["status"] == "succeeded"
    other = await a.run(two, "'secret' in globals()")
    assert other["result"] == "False", "a session never sees another session's variables"
    assert (await a2.run(one, "secret"))["result"] == "'one'", "another replica reaches the same interpreter"
    stranger = await start_shim(headers={"X-API-Key": KEY_A}, session_token_key="x" * 48, **tenants(kube))
    refused = await stranger.http.post(f"/sessions/{one}/execute", json={"code": "secret"})
    assert refused.status_code == 503, "a shim without the shared key cannot talk to the session's Pod"

    for method, path in (("GET", f"/sessions/{one}"), ("POST", f"/sessions/{one}/execute"),
                         ("DELETE", f"/sessions/{one}")):  # fmt: skip
        response = await b.http.request(method, path, json={"code": "secret"} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.text)
    assert (await b.http.get("/sessions")).json()["items"] == []
    mine = {item["session_id"] for item in (await a.http.get("/sessions")).json()["items"]}
    assert mine == {one, two}
    assert (
        kube.get("pods", f"{one}-session")["metadata"]["name"]
        != kube.get("pods", f"{two}-session")["metadata"]["name"]
    ), "one Pod per session"

    # The audit trail: each call left a record (a ConfigMap owned by the session), read by any replica.
    keyed = {"code": "secret * 2", "timeout": 30}
    first = await a.http.post(
        f"/sessions/{one}/execute", json=keyed, headers={"Idempotency-Key": "audit-key-1"}
    )
    replay = await a2.http.post(
        f"/sessions/{one}/execute", json=keyed, headers={"Idempotency-Key": "audit-key-1"}
    )
    assert first.status_code == replay.status_code == 200, (first.text, replay.text)
    assert replay.json()["execution_id"] == first.json()["execution_id"], "a replay is the same execution"
    job = await a.http.post("/execute/async", json={"code": "print(1)"})
    assert job.status_code in (200, 201, 202), job.text
    listed = (await a2.http.get("/executions", params={"session_id": one})).json()
    executions = [(r["execution_id"], r["session_id"]) for r in listed["items"]]
    assert len(executions) == 3, f"three calls on one, the replay recorded once: {executions}"
    assert {sid for _, sid in executions} == {one}
    stamps = [r["created_at"] for r in listed["items"]]
    assert stamps == sorted(stamps, reverse=True), "newest first"
    assert executions[0][0] == first.json()["execution_id"]
    mixed = {
        r["execution_id"]: r.get("session_id") for r in (await a.http.get("/executions")).json()["items"]
    }
    assert mixed[job.json()["job_id"]] is None and set(mixed.values()) == {None, one, two}, mixed
    paged = (await a.http.get("/executions", params={"session_id": one, "limit": 2})).json()
    assert [r["execution_id"] for r in paged["items"]] == [e for e, _ in executions[:2]]
    assert paged["has_more"] is True
    full = (await a2.http.get(f"/executions/{first.json()['execution_id']}", params={"view": "full"})).json()
    assert (full["session_id"], full["session_result"], full["status"]) == (one, "'oneone'", "succeeded")
    assert full["idempotency_key"] == "audit-key-1"
    backend = a2.server.app[BACKEND_KEY]  # the console shows each cell's code from here
    assert (await backend.get_submission("tenant-a", full["execution_id"])).code == "secret * 2"
    theirs = (await b.http.get("/executions")).json()["items"]  # (jobs: a namespace is their tenancy)
    assert [r for r in theirs if r.get("session_id")] == [], "another tenant sees no session execution"
    assert (await b.http.get("/executions", params={"session_id": one})).json()["items"] == []
    assert (await b.http.get(f"/executions/{first.json()['execution_id']}")).status_code == 404
    records = [
        c
        for c in kube.list("configmaps")
        if (c["metadata"].get("labels") or {}).get("takovm.dev/session") == one
    ]
    assert len(records) == 3, "one ConfigMap per execution, none for the replay"
    assert {ref["kind"] for c in records for ref in c["metadata"]["ownerReferences"]} == {"PythonSession"}


async def test_timeout_interrupts_the_cell_and_the_state_survives_but_ignoring_it_kills_the_session(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim(session_interrupt_grace_seconds=2)
    sid = await shim.new()
    await shim.run(sid, "total = 7")
    slow = await shim.run(sid, "import time\nwhile True:\n    time.sleep(0.1)", timeout=2)
    assert slow["status"] == "timeout"
    assert slow["error"]["type"] == "execution_timeout"
    assert "KeyboardInterrupt" in slow["error"]["traceback"] or "_Timeout" in slow["error"]["traceback"]
    assert (await shim.run(sid, "total * 6"))["result"] == "42", "the session lives on with its state"

    stubborn = (
        "import time\nwhile True:\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        pass"
    )
    killed = await shim.run(sid, stubborn, timeout=1)
    assert killed["status"] == "timeout"
    assert killed["error"]["type"] == "killed_after_timeout"
    gone = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "total"})
    assert gone.status_code == 410 and "killed_after_timeout" in gone.json()["detail"]
    ended = await until(lambda: status_where(kube, sid, phase="Ended"), what="the operator ends it")
    assert ended["status"]["endReason"] == "killed_after_timeout"
    conditions = {c["type"]: c["status"] for c in ended["status"]["conditions"]}
    assert conditions["Stalled"] == "True" and conditions["Ended"] == "True"
    assert kstatus(ended) == "Failed", "an abnormal end reads Failed in kstatus (Flux, Argo CD)"
    await until(lambda: kube.get("pods", f"{sid}-session") is None, seconds=15, what="the Pod deleted")


async def test_delete_ends_the_session_and_removes_its_pod_and_policy(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    sid = await shim.new()
    await shim.run(sid, "x = 1")
    run = node.runs[f"{sid}-session"]
    assert (await shim.http.delete(f"/sessions/{sid}")).status_code == 204
    info = (await shim.http.get(f"/sessions/{sid}")).json()
    assert (info["status"], info["end_reason"]) == ("ended", "deleted")
    again = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "x"})
    assert again.status_code == 410 and "deleted" in again.json()["detail"]
    assert (await shim.http.delete(f"/sessions/{sid}")).status_code == 410
    await until(lambda: kube.get("pods", f"{sid}-session") is None, seconds=15, what="the Pod deleted")
    await until(lambda: run.proc is not None and run.proc.poll() is not None, seconds=30, what="sandbox gone")
    assert kube.get("networkpolicies", f"{sid}-session") is None
    ended = await until(lambda: status_where(kube, sid, phase="Ended"), what="status Ended")
    assert ended["status"]["endReason"] == "deleted"
    assert kstatus(ended) == "Current" and kubectl_wait_met(ended, "Ended"), (
        "a normal end is done, not pending"
    )
    assert [e["reason"] for e in session_events(kube, sid, "Ended")] == ["Ended"]

    # `kubectl delete pysession NAME` ends a session too (the operator removes what it owned).
    other = await shim.new()
    await shim.run(other, "y = 2")
    assert kube.delete("pythonsessions", other)
    await until(lambda: kube.get("pods", f"{other}-session") is None, seconds=15, what="the Pod deleted")
    assert (await shim.http.get(f"/sessions/{other}")).status_code == 404


async def test_ttl_and_idle_timeout_end_sessions_and_their_sandboxes(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    short = await shim.new(ttl_seconds=8)
    idle = await shim.new(idle_timeout_seconds=6)
    await shim.run(short, "a = 1")
    await shim.run(idle, "b = 1")
    for sid, reason in ((short, "expired"), (idle, "idle")):
        ended = await until(lambda sid=sid: status_where(kube, sid, phase="Ended"), seconds=30, what=reason)
        assert ended["status"]["endReason"] == reason
        await until(lambda sid=sid: kube.get("pods", f"{sid}-session") is None, seconds=15, what="Pod gone")
        response = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "1"})
        assert response.status_code == 410 and reason in response.json()["detail"]
        assert (await shim.http.get(f"/sessions/{sid}")).json()["end_reason"] == reason


async def test_session_code_has_no_network_and_the_tenant_cap_is_429(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim(session_max_per_tenant=1)
    sid = await shim.new()
    probe = (
        "import socket\nout = []\nfor host in ('1.1.1.1', '8.8.8.8'):\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try:\n        s.connect((host, 443)); out.append('open')\n"
        "    except OSError:\n        out.append('closed')\n"
        "    finally:\n        s.close()\nout"
    )
    reply = await shim.run(sid, probe)
    assert reply["result"] == "['closed', 'closed']", reply
    refused = await shim.http.post("/sessions", json={})
    assert refused.status_code == 429
    assert "session_max_per_tenant" in refused.json()["detail"]
    assert (await shim.http.delete(f"/sessions/{sid}")).status_code == 204
    assert (await shim.http.post("/sessions", json={})).status_code == 201, "an ended session frees its slot"


async def test_an_oom_ends_the_session_and_says_so(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    run_operator()
    shim = await start_shim()
    sid = await shim.new(memory_limit="128m")
    await shim.run(sid, "keep = 1")
    reply = await shim.run(sid, "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))")
    assert reply["status"] == "failed", reply
    assert reply["error"]["type"] == "oom_killed"
    response = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "keep"})
    assert response.status_code == 410 and "oom_killed" in response.json()["detail"]


async def test_every_session_request_of_the_operator_and_the_shim_is_allowed_by_the_chart_rbac(
    kube: KubeHarness, node: NodeAgent, start_shim: Any, tmp_path: Path
) -> None:
    """The chart's Roles enforced on every request of a session's whole life (chart_support.Enforcer:
    403 for anything they do not grant): the shim's requests (User-Agent tako-shim) against the shim's
    Role, every other client's but the test's own (kopf, the operator's Kubernetes client) against the
    operator's. The operator runs with the environment the chart gives it (its session settings too).
    Every session rule of either Role is used: none is broader than what sessions need."""
    objects = render(
        {"jobs": {"namespaces": [kube.namespace]}, "sessions": {"retentionSeconds": 0}}, kube.namespace
    )
    operator_rbac = Enforcer(operator_grants(objects, kube.namespace))
    shim_rbac = Enforcer(shim_grants(objects, kube.namespace))

    def authorize(request: Any) -> bool:
        is_shim = request.headers.get("User-Agent") == "tako-shim"
        return (shim_rbac if is_shim else operator_rbac)(request)

    kube.authorize(authorize)
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "tako-operator"
    ]
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    config = settings_from_env({**env, "TAKO_OPERATOR_NAMESPACES": kube.namespace})
    assert config.sessions.client_pod_labels["app.kubernetes.io/component"] == "shim"
    operator = OperatorThread(
        OperatorOptions(
            namespaces=[kube.namespace], kubeconfig=str(kube.kubeconfig(tmp_path)), config=config,
            watch_server_timeout=5,
        )
    ).start()  # fmt: skip
    try:
        kube.create("pythonjobtypes", PIP_JOB_TYPE)
        shim = await start_shim(allow_runtime_requirements=True)
        installed = await shim.new(job_type="pip", requirements=["six==1.17.0"])
        assert (await shim.run(installed, "import six\nsix.__version__"))["result"] == "'1.17.0'"
        assert (await shim.http.delete(f"/sessions/{installed}")).status_code == 204
        sid = await shim.new()
        assert (await shim.run(sid, "n = 20"))["status"] == "succeeded"
        assert (await shim.run(sid, "n + 22"))["result"] == "42"
        assert len((await shim.http.get("/sessions")).json()["items"]) == 1
        audit = (await shim.http.get("/executions", params={"session_id": sid, "view": "full"})).json()[
            "items"
        ]
        assert [r["session_result"] for r in audit] == ["42", None], "both records, created and listed"
        await until(lambda: len(session_events(kube, sid, "Executed")) == 2, what="two Executed Events")
        assert (await shim.http.delete(f"/sessions/{sid}")).status_code == 204
        await until(lambda: kube.get("pods", f"{sid}-session") is None, seconds=15, what="the Pod deleted")
        # retentionSeconds 0: the operator deletes the ended PythonSession at once
        await until(lambda: kube.get("pythonsessions", sid) is None, seconds=15, what="the session deleted")
    finally:
        operator.stop()
        kube.authorize(None)

    assert operator_rbac.denied == [], "operator requests the chart's RBAC forbids"
    assert shim_rbac.denied == [], "shim requests the chart's RBAC forbids"
    # every session rule of each Role was used (test_chart.py pins the rule sets themselves); the
    # operator's pythonsessions/finalizers update is checked on each owned create, never requested
    for enforcer, resources in (
        (shim_rbac, ("pythonsessions", "events", "configmaps")),
        (operator_rbac, ("pythonsessions",)),
    ):
        granted = {
            (g.group, g.resource, g.verb) for g in enforcer.grants if g.resource.split("/")[0] in resources
        }
        granted -= {("takovm.dev", "pythonsessions/finalizers", "update")}
        used = {(g, r, v) for _, g, r, v in enforcer.used if r.split("/")[0] in resources}
        assert used == granted and granted, (used, granted)
    assert {
        ("", "pods", "create"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "delete"),
        ("", "pods", "patch"),  # the install egress label removed
        ("", "pods/log", "get"),  # the install step's result
        ("", "configmaps", "create"),
        ("", "configmaps", "delete"),
    } <= {(g, r, v) for _, g, r, v in operator_rbac.used}


async def test_requirements_install_with_egress_before_any_code_and_the_code_never_has_it(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    """A session with requirements: the Pod's install init container pip-installs them (the node agent
    gives it the host network, standing in for the install egress policy), the operator then removes the
    egress label and the install policy, the session server checks egress is closed before it listens,
    and the cells import the packages from /deps with no network."""
    run_operator()
    kube.create("pythonjobtypes", PIP_JOB_TYPE)
    shim = await start_shim(allow_runtime_requirements=True)
    refused = await shim.http.post("/sessions", json={"requirements": ["six==1.17.0"]})
    assert refused.status_code == 422 and "allowRuntimeRequirements" in refused.json()["detail"]
    strict = await start_shim(allow_runtime_requirements=False)
    disabled = await strict.http.post("/sessions", json={"job_type": "pip", "requirements": ["six==1.17.0"]})
    assert disabled.status_code == 422 and "allow_runtime_requirements" in disabled.json()["detail"]

    sid = await shim.new(job_type="pip", requirements=["six==1.17.0"])
    first = await shim.http.post(f"/sessions/{sid}/execute", json={"code": "import six\nsix.__version__"})
    status = (kube.get("pythonsessions", sid) or {}).get("status") or {}
    assert first.status_code == 200, (first.text, status.get("message"))
    reply = first.json()
    assert (reply["status"], reply["result"]) == ("succeeded", "'1.17.0'"), reply
    probe = (
        "import socket\ns = socket.socket(); s.settimeout(2)\n"
        "try:\n    s.connect(('1.1.1.1', 443)); r = 'open'\nexcept OSError:\n    r = 'closed'\nr"
    )
    assert (await shim.run(sid, probe))["result"] == "'closed'", "session code never has the install egress"
    pod = kube.get("pods", f"{sid}-session")
    assert pod is not None and "takovm.dev/egress" not in pod["metadata"]["labels"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["install"]
    assert kube.get("networkpolicies", f"{sid}-install-egress") is None, "the install policy is gone"
    assert session_events(kube, sid, "EgressClosed"), "the end of the install step is visible"
    assert (await shim.http.delete(f"/sessions/{sid}")).status_code == 204
    await until(lambda: kube.get("configmaps", f"{sid}-code") is None, seconds=15, what="install config gone")


async def test_a_running_call_streams_its_output_from_the_pod_through_any_replica(
    kube: KubeHarness, run_operator: Any, node: NodeAgent, start_shim: Any
) -> None:
    """``GET /sessions/{id}/executions/{eid}/events``: the Pod keeps the running call's output, any
    replica proxies it (token-authenticated) into SSE, a reconnect on another replica resumes without
    gaps or repeats, and the finished call streams from its record."""
    import uuid

    from session_sse import TICKING, check_live, read_events, text_of
    from tako_vm.models.sessions import execution_id_for_key

    run_operator()
    a = await start_shim(headers={"X-API-Key": KEY_A}, **tenants(kube))
    a2 = await start_shim(headers={"X-API-Key": KEY_A}, **tenants(kube))  # a second replica
    b = await start_shim(headers={"X-API-Key": KEY_B}, **tenants(kube))
    sid = await a.new()
    await a.run(sid, "x = 1")  # the Pod is up

    async def call(code: str) -> tuple[str, asyncio.Task[Any]]:
        key = "live-" + uuid.uuid4().hex
        post = a.http.post(f"/sessions/{sid}/execute", json={"code": code}, headers={"Idempotency-Key": key})
        return execution_id_for_key(sid, key), asyncio.ensure_future(post)

    eid, task = await call(TICKING)
    events = await read_events(a2.http, sid, eid, pending=task)  # another replica than the POST's
    reply = (await task).json()
    assert reply["execution_id"] == eid
    check_live(events, reply)
    assert "running" in [e["data"].get("status") for e in events if e["event"] == "status"]
    stored = await read_events(a.http, sid, eid, last=events[2]["id"])  # finished: from the record
    assert text_of(events[:3] + stored, "stdout") == reply["stdout"]
    assert stored[-1]["event"] == "result" and stored[-1]["data"]["result"] == "'done'"

    eid2, task2 = await call(TICKING)
    first = await read_events(a2.http, sid, eid2, stop_after=4, pending=task2)
    assert first[-1]["event"] != "result"
    rest = await read_events(a.http, sid, eid2, last=first[-1]["id"])  # resumed on another replica
    reply2 = (await task2).json()
    both = first + rest
    assert text_of(both, "stdout") == reply2["stdout"] and text_of(both, "stderr") == reply2["stderr"]
    assert len({e["id"] for e in both}) == len(both) and [e["event"] for e in both].count("result") == 1

    assert (await b.http.get(f"/sessions/{sid}/executions/{eid}/events")).status_code == 404
    unknown = await a.http.get(f"/sessions/{sid}/executions/{uuid.uuid4()}/events")
    assert unknown.status_code == 404 and "Execution not found" in unknown.text
