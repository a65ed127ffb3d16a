"""PythonSession on Kubernetes, the pure parts: the Pod, NetworkPolicy and Secret the operator builds,
the per-pass plan (TTL, idle, delete, OOM, retention), kstatus conditions, and the in-Pod session
server (a real process on loopback: state kept, token checked, idempotent replays)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tako_operator.core import sessions as ss
from tako_operator.session_settings import SessionSettings, sessions_from_env
from tako_operator.settings import PodSettings, settings_from_env
from tako_runner import session_server
from tako_vm.models.crd import DEFAULT_JOB_TYPE, PythonSession, PythonSessionStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from status_readers import kstatus, kubectl_wait_met

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
JOB_TYPE = DEFAULT_JOB_TYPE.model_dump(by_alias=True, exclude_none=True)
TOKEN = "t" * 40
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()


def session(name: str = "s1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonSession",
        "metadata": {
            "name": name,
            "namespace": "tenant-a",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-01-01T12:00:00Z",
        },
        "spec": {"ttlSeconds": 3600, "idleTimeoutSeconds": 600, "tokenSha256": TOKEN_SHA, **spec},
    }


def ready_pod(ip: str = "10.0.0.7") -> dict[str, Any]:
    return {
        "metadata": {"name": "s1-session"},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def plan(
    obj: dict[str, Any], pod: dict[str, Any] | None = None, now: datetime.datetime = NOW, **kw: Any
) -> ss.SessionPlan:
    return ss.plan_session(
        obj,
        pod=pod,
        job_type=kw.pop("job_type", JOB_TYPE),
        settings=PodSettings(),
        sessions=kw.pop("sessions", SessionSettings()),
        now=now,
        install_log=kw.pop("install_log", None),
    )


def after(obj: dict[str, Any], result: ss.SessionPlan) -> dict[str, Any]:
    """The session with the plan's status merged in (as the API server would store it)."""
    status = {**(obj.get("status") or {}), **(result.status or {})}
    return {**obj, "status": {k: v for k, v in status.items() if v is not None}}


# --- builders ---------------------------------------------------------------------------------------


def test_pod_is_hardened_gvisor_and_holds_only_the_hash_of_its_token() -> None:
    model = PythonSession.model_validate(session(resources={"memory": "1Gi"}))
    pod = ss.build_session_pod(model, DEFAULT_JOB_TYPE, PodSettings(), SessionSettings(port=8791))
    spec = pod["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["hostNetwork"] is False
    assert spec["activeDeadlineSeconds"] == 3600 + SessionSettings().deadline_grace_seconds
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["command"][-3:] == ["/runner/session_server.py", "--port", "8791"]
    assert container["ports"] == [{"name": "session", "containerPort": 8791, "protocol": "TCP"}]
    token_env = [e for e in container["env"] if e["name"] == ss.TOKEN_HASH_ENV]
    assert token_env == [{"name": ss.TOKEN_HASH_ENV, "value": TOKEN_SHA}]
    assert TOKEN not in json.dumps(pod), "the token itself never appears in the Pod spec"
    assert {v["name"] for v in spec["volumes"]} == {"runner", "tmp"}
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("PythonSession", "uid-s1", True)
    assert pod["metadata"]["labels"][ss.LABEL_SESSION] == "s1"


def test_network_policy_admits_only_the_shim_on_the_session_port_and_no_egress() -> None:
    model = PythonSession.model_validate(session())
    settings = SessionSettings(port=9000, client_namespace="tako-system")
    policy = ss.build_session_policy(model, settings)["spec"]
    assert policy["podSelector"] == {"matchLabels": {ss.LABEL_SESSION: "s1"}}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "shim"
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "tako-system"}
    closed = ss.build_session_policy(model, SessionSettings(client_pod_labels={}))["spec"]
    assert closed["ingress"] == [], "no client labels: nobody gets in (fail closed)"


def test_session_configmap_ships_the_server_and_is_named_by_content() -> None:
    configmap = ss.build_session_configmap("tenant-a")
    assert set(configmap["data"]) == {"runner.py", "session.py", "session_server.py"}
    assert configmap["metadata"]["name"] == ss.session_configmap_name()
    assert configmap["immutable"] is True


def test_settings_from_env() -> None:
    env = {
        "TAKO_OPERATOR_SESSION_PORT": "9100",
        "TAKO_OPERATOR_SESSION_CLIENT_NAMESPACE": "tako",
        "TAKO_OPERATOR_SESSION_CLIENT_LABELS": "a=b,c=d",
        "TAKO_OPERATOR_SESSION_RETENTION_SECONDS": "10",
    }
    assert settings_from_env(env).sessions == SessionSettings(
        port=9100, client_namespace="tako", client_pod_labels={"a": "b", "c": "d"}, retention_seconds=10
    )
    with pytest.raises(ValueError, match="TAKO_OPERATOR_SESSION_PORT"):
        sessions_from_env({"TAKO_OPERATOR_SESSION_PORT": "70000"})
    with pytest.raises(ValueError, match="k=v"):
        sessions_from_env({"TAKO_OPERATOR_SESSION_CLIENT_LABELS": "nolabel"})


# --- the plan -----------------------------------------------------------------------------------------


def test_new_session_creates_its_objects_and_is_pending_then_ready() -> None:
    obj = session()
    first = plan(obj)
    kinds = [o["kind"] for o in first.create]
    assert kinds == ["ConfigMap", "NetworkPolicy", "Pod"]
    assert first.status is not None
    assert first.status["phase"] == "Pending"
    assert first.status["expiresAt"] == "2026-01-01T13:00:00Z"
    conditions = {c["type"]: c["status"] for c in first.status["conditions"]}
    assert conditions == {"Ready": "False", "Reconciling": "True"}
    PythonSessionStatus.model_validate(first.status)
    assert kstatus(after(obj, first)) == "InProgress"
    assert first.status["observedGeneration"] == 1
    assert all(c["observedGeneration"] == 1 for c in first.status["conditions"])

    ready = plan(after(obj, first), pod=ready_pod(), now=NOW + datetime.timedelta(seconds=3))
    assert ready.create == []
    assert ready.status is not None
    assert ready.status["phase"] == "Ready"
    assert ready.status["address"] == "10.0.0.7:8791"
    conditions = {c["type"]: c["status"] for c in ready.status["conditions"]}
    assert conditions == {"Ready": "True", "Ended": "False"}, "Reconciling is dropped once ready (kstatus)"
    assert kstatus(after(after(obj, first), ready)) == "Current"
    assert kubectl_wait_met(after(after(obj, first), ready), "Ready")
    assert [e[1] for e in ready.events] == ["Ready"]
    assert ready.requeue_after is not None and 590 < ready.requeue_after < 601, "wakes at the idle deadline"


def test_executions_and_last_activity_come_from_the_shim_annotations() -> None:
    obj = session()
    obj["status"] = {"phase": "Ready", "podName": "s1-session"}
    obj["metadata"]["annotations"] = {
        ss.ANNOTATION_EXECUTIONS: "3",
        ss.ANNOTATION_LAST_ACTIVITY: "2026-01-01T12:30:00Z",
    }
    result = plan(obj, pod=ready_pod(), now=NOW + datetime.timedelta(minutes=35))
    assert result.status is not None
    assert result.status["executions"] == 3
    assert result.status["lastActivityTime"] == "2026-01-01T12:30:00Z"
    assert result.status.get("phase") != "Ended", "35 min after creation, 5 min idle: still open"


@pytest.mark.parametrize(
    ("minutes", "annotations", "pod_status", "reason", "stalled"),
    [
        (61, {}, None, "expired", False),
        (11, {}, None, "idle", False),
        (1, {ss.ANNOTATION_END: "deleted"}, None, "deleted", False),
        (1, {ss.ANNOTATION_END: "killed_after_timeout"}, None, "killed_after_timeout", True),
        (1, {}, {"phase": "Failed", "containerStatuses": [
            {"name": "session", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
         "oom_killed", True),
        (1, {}, {"phase": "Failed", "containerStatuses": [
            {"name": "session", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]},
         "crashed", True),
    ],
)  # fmt: skip
def test_session_ends_with_its_reason_and_its_pod_is_deleted(
    minutes: int, annotations: dict[str, str], pod_status: dict[str, Any] | None, reason: str, stalled: bool
) -> None:
    obj = session()
    obj["metadata"]["annotations"] = annotations
    obj["status"] = {"phase": "Ready", "podName": "s1-session"}
    pod = ready_pod()
    if pod_status is not None:
        pod["status"] = pod_status
    result = plan(obj, pod=pod, now=NOW + datetime.timedelta(minutes=minutes))
    assert result.status is not None
    assert result.status["phase"] == "Ended"
    assert result.status["endReason"] == reason
    assert result.delete_pod == "s1-session"
    assert result.cleanup is True
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert "Ready" not in conditions and "Reconciling" not in conditions
    assert conditions["Ended"]["status"] == "True"
    assert ("Stalled" in conditions) is stalled
    assert kstatus(after(obj, result)) == ("Failed" if stalled else "Current")
    assert [e[1] for e in result.events] == ["Ended"]
    PythonSessionStatus.model_validate(result.status)


def test_ended_session_is_kept_for_its_retention_then_deleted() -> None:
    obj = session()
    obj["status"] = {"phase": "Ended", "endReason": "idle", "endedAt": "2026-01-01T12:10:00Z"}
    keep = plan(obj, now=datetime.datetime(2026, 1, 1, 12, 20, tzinfo=datetime.UTC))
    assert keep.delete_session is False and keep.create == []
    assert keep.requeue_after == pytest.approx(50 * 60)
    gone = plan(obj, now=datetime.datetime(2026, 1, 1, 13, 10, tzinfo=datetime.UTC))
    assert gone.delete_session is True


def test_unknown_job_type_no_token_hash_and_a_pod_never_ready_are_start_failures() -> None:
    unreachable = session()
    del unreachable["spec"]["tokenSha256"]
    refused = plan(unreachable)
    assert refused.status is not None and refused.status["endReason"] == "start_failed"
    assert refused.create == [], "no Pod nobody could send code to"
    assert "tokenSha256" in refused.status["message"]
    missing = plan(session(jobType="nope"), job_type=None)
    assert missing.status is not None and missing.status["endReason"] == "start_failed"
    assert "nope" in missing.status["message"]
    obj = session()
    obj["status"] = {"phase": "Pending", "podName": "s1-session"}
    pending_pod = {"metadata": {"name": "s1-session"}, "status": {"phase": "Pending"}}
    slow = plan(obj, pod=pending_pod, now=NOW + datetime.timedelta(seconds=121))
    assert slow.status is not None and slow.status["endReason"] == "start_failed"


def test_a_deleted_pod_ends_the_session_as_crashed() -> None:
    obj = session()
    obj["status"] = {"phase": "Ready", "podName": "s1-session"}
    result = plan(obj, pod=None, now=NOW + datetime.timedelta(seconds=30))
    assert result.status is not None and result.status["endReason"] == "crashed"
    assert result.create == []


# --- the in-Pod session server (a real process) ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Any) -> Iterator[str]:
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(tmp_path), ss.TOKEN_HASH_ENV: TOKEN_SHA}
    argv = [sys.executable, "-I", session_server.__file__, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, "the session server did not listen"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def post(url: str, body: dict[str, Any], token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url + "/execute",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_session_server_keeps_state_checks_the_token_and_replays_by_key(server: str) -> None:
    assert post(server, {"code": "x = 1", "timeout": 5}, token="wrong" * 8)[0] == 401
    status, first = post(server, {"code": "x = 41\nimport math", "timeout": 5})
    assert (status, first["status"], first["number"]) == (200, "succeeded", 1)
    status, second = post(server, {"code": "x + 1", "timeout": 5})
    assert (second["result"], second["number"]) == ("42", 2)
    _, slow = post(server, {"code": "import time\ntime.sleep(30)", "timeout": 1})
    assert slow["status"] == "timeout"
    _, still = post(server, {"code": "math.floor(x / 2)", "timeout": 5})
    assert still["result"] == "20", "state survives a timeout"
    _, keyed = post(server, {"code": "x += 1\nx", "timeout": 5, "key": "k-123456"})
    _, again = post(server, {"code": "x += 1\nx", "timeout": 5, "key": "k-123456"})
    assert keyed["result"] == again["result"] == "42" and again["replayed"] is True
    assert post(server, {"code": "x", "timeout": 5, "key": "k-123456"})[0] == 409
    assert post(server, {"code": "x", "timeout": 0})[0] == 400
    assert post(server, {"code": "x", "timeout": 5, "image": "evil"})[0] == 400


def test_session_server_holds_no_token_session_code_could_read(server: str) -> None:
    """The session's own code can read its whole process; what it finds is the hash, never the token."""
    probe = "import gc\nany(isinstance(o, str) and o == 't' * 40 for o in gc.get_objects())"
    _, reply = post(server, {"code": probe, "timeout": 5})
    assert reply["status"] == "succeeded"
    assert reply["result"] == "False"
    _, environ = post(server, {"code": "import os\nos.environ['TAKO_SESSION_TOKEN_SHA256']", "timeout": 5})
    assert environ["result"] == repr(TOKEN_SHA)


def test_session_server_refuses_to_start_without_a_token_hash(tmp_path: Any) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(tmp_path), ss.TOKEN_HASH_ENV: "abc"}
    argv = [sys.executable, "-I", session_server.__file__, "--port", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"TAKO_SESSION_TOKEN_SHA256" in done.stderr


# --- requirements: an install step with egress, closed before any code ------------------------------------

INSTALLING = DEFAULT_JOB_TYPE.model_copy(update={"allow_runtime_requirements": True})
INSTALLING_JSON = INSTALLING.model_dump(by_alias=True, exclude_none=True)


def test_requirements_add_an_install_step_with_egress_that_the_session_container_never_has() -> None:
    model = PythonSession.model_validate(session(requirements=["six==1.17.0"]))
    pod = ss.build_session_pod(model, INSTALLING, PodSettings(), SessionSettings(port=8791))
    spec = pod["spec"]
    (install,) = spec["initContainers"]
    assert install["name"] == "install"
    assert install["command"] == [
        "python3",
        "-I",
        "/runner/runner.py",
        "install",
    ]  # its config: /code/job.json
    assert install["securityContext"]["readOnlyRootFilesystem"] is True
    assert install["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"]: m.get("readOnly", False) for m in install["volumeMounts"]} == {
        "/runner": True, "/code": True, "/tmp": False, "/deps": False,
    }  # fmt: skip
    (container,) = spec["containers"]
    assert container["command"][-2:] == ["--config", "/code/job.json"]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/deps"] is True, "the session reads what was installed, never writes it"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["runner"]["configMap"]["name"] == ss.session_configmap_name()
    assert volumes["code"]["projected"]["sources"][0]["configMap"]["name"] == "s1-code"
    assert "emptyDir" in volumes["deps"]
    assert pod["metadata"]["labels"]["takovm.dev/egress"] == "install"
    config = json.loads(ss.build_install_configmap(model, INSTALLING, PodSettings())["data"]["job.json"])
    assert config["requirements"] == ["six==1.17.0"] and config["egress_probe"] is True
    assert config["deps_dir"] == "/deps"

    policy = ss.build_install_policy(model, PodSettings())
    assert policy["metadata"]["name"] == ss.install_policy_name("s1")
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "PythonSession"
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        ss.LABEL_SESSION: "s1",
        "takovm.dev/egress": "install",
    }
    dns, https = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    public = https["to"][0]
    assert "169.254.0.0/16" in public["ipBlock"]["except"] and "10.0.0.0/8" in public["ipBlock"]["except"]
    # the session's own policy (no egress, ever) is unchanged: the install policy only adds while labelled
    assert ss.build_session_policy(model, SessionSettings())["spec"]["egress"] == []


def test_a_session_without_requirements_has_no_install_step() -> None:
    pod = ss.build_session_pod(
        PythonSession.model_validate(session()), INSTALLING, PodSettings(), SessionSettings()
    )
    assert "initContainers" not in pod["spec"] and "takovm.dev/egress" not in pod["metadata"]["labels"]
    assert "--config" not in pod["spec"]["containers"][0]["command"]


def _installed(pod: dict[str, Any], exit_code: int = 0) -> dict[str, Any]:
    return {
        **pod,
        "metadata": {**pod["metadata"], "labels": {"takovm.dev/egress": "install"}},
        "status": {
            **pod["status"],
            "initContainerStatuses": [
                {"name": "install", "state": {"terminated": {"exitCode": exit_code, "reason": "Completed"}}}
            ],
        },
    }


def test_plan_installs_then_closes_egress_or_ends_the_session_naming_the_install_failure() -> None:
    from tako_runner.outcome import ENVELOPE_VERSION, frame_envelope

    obj = session(requirements=["six==1.17.0"])
    first = plan(obj, job_type=INSTALLING_JSON)
    assert [(o["kind"], o["metadata"]["name"]) for o in first.create] == [
        ("ConfigMap", ss.session_configmap_name()),
        ("ConfigMap", "s1-code"),
        ("NetworkPolicy", "s1-install-egress"),
        ("NetworkPolicy", "s1-session"),
        ("Pod", "s1-session"),
    ]
    obj["status"] = {"phase": "Pending", "podName": "s1-session"}
    pending = {"metadata": {"name": "s1-session"}, "status": {"phase": "Pending"}}
    ok_log = frame_envelope({"v": ENVELOPE_VERSION, "mode": "install", "error": None, "exit_code": 0})
    done = plan(obj, pod=_installed(pending), job_type=INSTALLING_JSON, install_log=ok_log)
    assert done.remove_egress is True and done.create == []
    assert [e[1] for e in done.events] == ["EgressClosed"]

    pip_failed = frame_envelope(
        {"v": ENVELOPE_VERSION, "mode": "install", "exit_code": 1,
         "error": {"type": "dependency_error", "message": "pip install failed: No matching distribution"}}
    )  # fmt: skip
    failed = plan(obj, pod=_installed(pending), job_type=INSTALLING_JSON, install_log=pip_failed)
    assert failed.status is not None and failed.status["endReason"] == "start_failed"
    assert "No matching distribution" in failed.status["message"] and failed.remove_egress is False
    assert failed.delete_pod == "s1-session"
    crashed = plan(obj, pod=_installed(pending, exit_code=137), job_type=INSTALLING_JSON, install_log="")
    assert crashed.status is not None and "exited with code 137" in crashed.status["message"]

    still_open = ready_pod()
    stopped = {"terminated": {"exitCode": ss.EXIT_EGRESS_OPEN, "reason": "Error"}}
    still_open["status"] = {"phase": "Failed", "containerStatuses": [{"name": "session", "state": stopped}]}
    refused = plan(obj, pod=still_open, job_type=INSTALLING_JSON)
    assert refused.status is not None and refused.status["endReason"] == "start_failed"
    assert "egress was still open" in refused.status["message"]


def test_requirements_on_a_job_type_without_runtime_requirements_never_get_a_pod() -> None:
    result = plan(session(requirements=["six"]), job_type=JOB_TYPE)
    assert result.create == []
    assert result.status is not None and result.status["endReason"] == "start_failed"
    assert "allowRuntimeRequirements" in result.status["message"]


def test_session_server_waits_for_closed_egress_and_imports_the_installed_packages(tmp_path: Any) -> None:
    deps = tmp_path / "deps"
    (deps / "tako_dep_probe").mkdir(parents=True)
    (deps / "tako_dep_probe" / "__init__.py").write_text("VALUE = 7\n")
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"deps_dir": str(deps), "egress_probe": False}))
    assert session_server.prepare_installed(str(config)) is None
    try:
        import tako_dep_probe  # type: ignore[import-not-found]

        assert tako_dep_probe.VALUE == 7
    finally:
        sys.path.remove(str(deps))
        sys.modules.pop("tako_dep_probe", None)
    # egress open (a listener on loopback stands in for the internet): refuse, naming it
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config.write_text(json.dumps({
            "deps_dir": str(deps), "egress_probe": True, "egress_probe_timeout": 1,
            "egress_probe_targets": [["127.0.0.1", port]], "egress_probe_hostname": None,
        }))  # fmt: skip
        problem = session_server.prepare_installed(str(config))
    assert problem is not None and "egress still open" in problem


def test_the_shim_puts_requirements_in_the_spec_only_when_allowed_and_well_formed() -> None:
    from tako_shim.backends.kubernetes import session_translate as st
    from tako_shim.errors import InvalidRequest
    from tako_vm.models.sessions import CreateSessionRequest

    def build(requirements: list[str], allowed: bool) -> dict[str, Any]:
        body = CreateSessionRequest(requirements=requirements)
        name = "sess-" + "0" * 32
        return st.session_object(
            name, "ns", "t", body, token=TOKEN, max_ttl=86400, max_memory="2g", allow_requirements=allowed
        )

    assert build(["six==1.17.0"], True)["spec"]["requirements"] == ["six==1.17.0"]
    with pytest.raises(InvalidRequest, match="allow_runtime_requirements"):
        build(["six"], False)
    with pytest.raises(InvalidRequest, match=r"requirements\.0: not a plain requirement"):
        build(['six; os_name=="nt"'], True)
    assert "requirements" not in build([], True)["spec"]


def events(url: str, execution: str, after: int = 0, wait: float = 0, token: str = TOKEN) -> tuple[int, Any]:
    query = f"/events?execution={execution}&after={after}&wait={wait}"
    request = urllib.request.Request(url + query, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_session_server_publishes_the_running_calls_output_to_the_token_holder(server: str) -> None:
    import threading

    code = (
        "import sys, time\nfor i in range(3):\n    print(i)\n    print('e', file=sys.stderr)\n"
        "    time.sleep(0.5)"
    )
    replies: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: replies.update(a=post(server, {"code": code, "timeout": 20, "execution": "ex-1"}))
    )
    first.start()
    seen: list[list[str]] = []
    live_polls = 0
    deadline = time.monotonic() + 20
    while True:
        status, answer = events(server, "ex-1", after=len(seen), wait=2)
        if status == 404 and not seen:
            assert time.monotonic() < deadline
            continue
        assert status == 200, answer
        if answer["status"] == "running" and answer["chunks"]:
            live_polls += 1  # output handed over before the call ended
        seen += answer["chunks"]
        if answer["status"] == "done":
            break
    first.join()
    reply = replies["a"][1]
    assert "".join(t for s, t in seen if s == "stdout") == reply["stdout"] == "0\n1\n2\n"
    assert "".join(t for s, t in seen if s == "stderr") == reply["stderr"] == "e\ne\ne\n"
    assert answer["reply"]["number"] == reply["number"] and live_polls >= 2, live_polls
    assert events(server, "ex-1", token="wrong" * 8)[0] == 401
    assert events(server, "other")[0] == 404
    assert events(server, "ex-1", after=-1)[0] == 400
