"""Pod Security `restricted` (enforced by the chart on job namespaces) admits what the product creates.

The chart labels every job namespace `pod-security.kubernetes.io/enforce: restricted`. If a job Pod
built by the operator broke one rule, the API server would refuse it and no job could ever run.
No API server runs here, so `restricted_violations` implements the checks of the Pod Security
Standards (kubernetes.io/docs/concepts/security/pod-security-standards, "Restricted", which
includes "Baseline") and is applied to the Pods the operator's real builders produce for every
sample, and to the chart's own Pod templates. Each check is also shown to catch a bad Pod.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from tako_operator.core import objects
from tako_operator.settings import PodSettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "crds" / "samples"
PodSpec = dict[str, Any]

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def containers(spec: PodSpec) -> Iterator[dict[str, Any]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(field) or []


def restricted_violations(spec: PodSpec) -> list[str]:
    pod = spec.get("securityContext") or {}
    found: list[str] = []
    # Baseline
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            found.append(f"{host} is true")
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        found.append("hostProcess")
    if any(sysctl["name"] not in SAFE_SYSCTLS for sysctl in pod.get("sysctls") or []):
        found.append("unsafe sysctl")
    for context in [pod, *((c.get("securityContext") or {}) for c in containers(spec))]:
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append("seLinuxOptions")
        if (context.get("appArmorProfile") or {}).get("type") not in {None, "RuntimeDefault", "Localhost"}:
            found.append("appArmorProfile")
    # Restricted: volumes
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} of type {sorted(kinds)}")
    for container in containers(spec):
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            found.append(f"{name}: hostPort")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser", pod.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
    if pod.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    return found


def sample_jobs() -> list[tuple[str, dict[str, Any]]]:
    jobs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "PythonJob":
                doc["metadata"].update(
                    namespace="tako-jobs", uid="0f6c1c1e-0000-4000-8000-000000000001", generation=1
                )
                jobs.append((path.stem, doc))
    return jobs


def job_types() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(SAMPLES.glob("jobtype-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        found[doc["metadata"]["name"]] = doc
    return found


def job_pod(job: dict[str, Any]) -> PodSpec:
    name = objects.job_type_name(job)
    job_type = objects.resolve_job_type(name, job_types().get(name))
    assert job_type is not None, name
    (pod,) = [o for o in objects.attempt_objects(job, job_type, PodSettings(), 1) if o["kind"] == "Pod"]
    spec: PodSpec = pod["spec"]
    return spec


@pytest.mark.parametrize(("sample", "job"), sample_jobs(), ids=[name for name, _ in sample_jobs()])
def test_job_pods_of_every_sample_pass_pod_security_restricted(sample: str, job: dict[str, Any]) -> None:
    spec = job_pod(job)
    assert restricted_violations(spec) == []
    assert spec["runtimeClassName"] == "gvisor"  # the RuntimeClass the chart can create


@pytest.mark.parametrize("requirements", [None, ["six==1.17.0"]], ids=["plain", "with-requirements"])
def test_session_pods_pass_pod_security_restricted(requirements: list[str] | None) -> None:
    """The session sample's Pod (and the same with requirements: its install init container too)."""
    from tako_operator.core import sessions as core_sessions
    from tako_operator.session_settings import SessionSettings
    from tako_vm.models.crd import PythonJobTypeSpec, PythonSession

    doc = yaml.safe_load((SAMPLES / "session.yaml").read_text())
    doc["metadata"].update(namespace="tako-jobs", uid="0f6c1c1e-0000-4000-8000-000000000002")
    doc["spec"].update(tokenSha256="0" * 64, **({"requirements": requirements} if requirements else {}))
    job_type = PythonJobTypeSpec.model_validate(
        {**job_types()["default"]["spec"], "allowRuntimeRequirements": True}
    )
    pod = core_sessions.build_session_pod(
        PythonSession.model_validate(doc), job_type, PodSettings(), SessionSettings()
    )
    assert restricted_violations(pod["spec"]) == []
    assert bool(pod["spec"].get("initContainers")) is bool(requirements)


def test_the_charts_own_pods_pass_pod_security_restricted() -> None:
    with helm.Chart.load(ROOT / "charts" / "tako-vm") as chart:
        rendered = chart.render(name="tako", namespace="tako-system")
    specs = []
    for path, text in rendered.items():
        for doc in yaml.safe_load_all(text) if not path.endswith("NOTES.txt") else []:
            if doc and doc["kind"] == "Deployment":
                specs.append(doc["spec"]["template"]["spec"])
            elif doc and doc["kind"] == "Pod":
                specs.append(doc["spec"])
    assert len(specs) == 3
    for spec in specs:
        assert restricted_violations(spec) == []


def _set(path: list[str | int], value: Any) -> Callable[[PodSpec], None]:
    def mutate(spec: PodSpec) -> None:
        node: Any = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(["hostNetwork"], True), "hostNetwork is true"),
        (_set(["containers", 0, "securityContext", "privileged"], True), "job: privileged"),
        (
            _set(["containers", 0, "securityContext", "allowPrivilegeEscalation"], True),
            "allowPrivilegeEscalation",
        ),
        (_set(["containers", 0, "securityContext", "runAsNonRoot"], False), "runAsNonRoot must be true"),
        (_set(["containers", 0, "securityContext", "runAsUser"], 0), "runAsUser 0"),
        (
            _set(["containers", 0, "securityContext", "seccompProfile"], {"type": "Unconfined"}),
            "seccompProfile",
        ),
        (_set(["containers", 0, "securityContext", "capabilities"], {"drop": ["NET_RAW"]}), "drop ALL"),
        (
            _set(
                ["containers", 0, "securityContext", "capabilities"], {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
            ),
            "adds",
        ),
        (
            _set(["volumes", 0], {"name": "host", "hostPath": {"path": "/"}}),
            "volume host of type ['hostPath']",
        ),
        (_set(["containers", 0, "ports"], [{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    ],
)
def test_the_checker_catches_each_violation(mutate: Callable[[PodSpec], None], message: str) -> None:
    spec = copy.deepcopy(job_pod(sample_jobs()[0][1]))
    mutate(spec)
    assert any(message in violation for violation in restricted_violations(spec))
