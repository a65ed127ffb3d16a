"""Pure builders: a PythonJob (plus its job type and the operator settings) in, Kubernetes objects out.

Every function here returns plain dicts and does no I/O: no kopf, no Kubernetes client, no clock, no
environment. The Pod layout is the one the runner (``tako_runner/runner.py``) expects::

    /runner/runner.py   runner ConfigMap, read-only           (shared per namespace, named by content hash)
    /code/main.py       job ConfigMap or spec.codeRef, r/o    /code/job.json  the runner's config, r/o
    /input/data.json    job ConfigMap, read-only              /output, /tmp   size-limited emptyDirs
    /deps               emptyDir; written by the "install" init container, read-only for "job"

Security properties (each asserted by tests/unit/test_builders.py): gVisor runtime class, non-root uid,
read-only root filesystem, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, no
service-account token, no service links, requests equal limits, a hard activeDeadlineSeconds, a deny-all
NetworkPolicy, and install-only egress to DNS and public HTTPS.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from decimal import Decimal
from functools import cache
from typing import Any

from tako_operator.settings import PRIVATE_IPV4_RANGES, PRIVATE_IPV6_RANGES, PodSettings
from tako_vm.models.crd import (
    API_VERSION,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    RESERVED_LABEL_PREFIX,
    PythonJob,
    PythonJobTypeSpec,
)
from tako_vm.models.runner import RunnerConfig

CONFIGMAP_MAX_BYTES = 1_048_576  # the API server's limit on a ConfigMap's keys + values
NAME_MAX = 253

JOB_CONTAINER = "job"
INSTALL_CONTAINER = "install"
LABEL_JOB = "takovm.dev/job"
LABEL_JOB_UID = "takovm.dev/job-uid"
LABEL_JOB_TYPE = "takovm.dev/job-type"
LABEL_ATTEMPT = "takovm.dev/attempt"
LABEL_EGRESS = "takovm.dev/egress"
EGRESS_INSTALL = "install"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_RUNNER_SHA = "takovm.dev/runner-sha256"
COMMON_LABELS = {"app.kubernetes.io/name": "tako-vm", "app.kubernetes.io/managed-by": "tako-vm-operator"}

RUNNER_DIR, CODE_DIR, INPUT_DIR, OUTPUT_DIR, TMP_DIR, DEPS_DIR = (
    "/runner",
    "/code",
    "/input",
    "/output",
    "/tmp",
    "/deps",
)


class JobRejected(ValueError):
    """The job cannot be built as asked; ``field`` names the offending spec field.

    The operator turns this into a Failed status with error type ``config_error``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- names and metadata -----------------------------------------------------------------------------


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def child_name(job_name: str, suffix: str) -> str:
    """``<job>-<suffix>``, shortened with a hash when it would exceed 253 characters (deterministic)."""
    name = f"{job_name}-{suffix}"
    if len(name) <= NAME_MAX:
        return name
    keep = NAME_MAX - len(suffix) - 12
    return f"{job_name[:keep].rstrip('-.')}-{_short_hash(job_name)}-{suffix}"


def label_safe(value: str) -> str:
    """A label value for ``value`` (at most 63 characters; long names get a hash suffix)."""
    if len(value) <= 63 and re.fullmatch(LABEL_VALUE_PATTERN, value):
        return value
    head = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:52].strip("-_.")
    return f"{head}-{_short_hash(value)}" if head else _short_hash(value)


def pod_name(job: PythonJob, attempt: int) -> str:
    """``<job>-pod`` for the first attempt, ``<job>-pod-a<N>`` for retries."""
    if attempt < 1:
        raise ValueError("attempt must be >= 1")
    return child_name(job.name, "pod" if attempt == 1 else f"pod-a{attempt}")


def code_configmap_name(job: PythonJob) -> str:
    return child_name(job.name, "code")


def deny_policy_name(job: PythonJob) -> str:
    return child_name(job.name, "deny")


def install_policy_name(job: PythonJob) -> str:
    return child_name(job.name, "install-egress")


def job_labels(job: PythonJob) -> dict[str, str]:
    """Labels every child of the job carries; the job label is what the policies select on."""
    labels = {**COMMON_LABELS, LABEL_JOB: label_safe(job.name)}
    uid = job.metadata.get("uid")
    if uid:
        labels[LABEL_JOB_UID] = label_safe(str(uid))
    return labels


def owner_reference(job: PythonJob) -> dict[str, Any]:
    uid = job.metadata.get("uid")
    if not uid:
        raise ValueError(f"PythonJob {job.name!r} has no metadata.uid: children need an owner reference")
    return {
        "apiVersion": API_VERSION,
        "kind": "PythonJob",
        "name": job.name,
        "uid": str(uid),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _child_metadata(job: PythonJob, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**job_labels(job), LABEL_COMPONENT: component},
        "ownerReferences": [owner_reference(job)],
    }


def user_pod_labels(job: PythonJob) -> dict[str, str]:
    """The job's ``spec.podLabels``, checked again here: a reserved or malformed key is rejected,
    never copied (the CRD's CEL rule and the pydantic model reject them too)."""
    labels = job.spec.pod_labels or {}
    for key, value in labels.items():
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise JobRejected(
                "spec.podLabels", f"key {key!r} uses the reserved prefix {RESERVED_LABEL_PREFIX}"
            )
        if not re.fullmatch(LABEL_KEY_PATTERN, key) or not re.fullmatch(LABEL_VALUE_PATTERN, value):
            raise JobRejected("spec.podLabels", f"{key}={value} is not a valid label")
    return dict(labels)


# --- quantities and effective values ----------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
}  # fmt: skip


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (the subset the CRD accepts) as a number of base units."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _FACTORS[match.group(2)]


def effective_resources(job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings) -> dict[str, str]:
    """Memory and CPU for the job: ``spec.resources`` over the job type's, within the operator's bounds."""
    override = job.spec.resources
    memory = (override.memory if override else None) or job_type.resources.memory
    cpu = (override.cpu if override else None) or job_type.resources.cpu
    for field_name, value, low, high in (
        ("spec.resources.memory", memory, settings.min_memory, settings.max_memory),
        ("spec.resources.cpu", cpu, settings.min_cpu, settings.max_cpu),
    ):
        if not parse_quantity(low) <= parse_quantity(value) <= parse_quantity(high):
            raise JobRejected(field_name, f"{value} is outside the allowed range {low}..{high}")
    return {"memory": memory, "cpu": cpu}


def effective_timeouts(job: PythonJob, job_type: PythonJobTypeSpec) -> tuple[int, int]:
    """(timeout, startup_timeout) in seconds: the job's own, else the job type's."""
    timeout = job.spec.timeout_seconds or job_type.timeout_seconds
    startup = job.spec.startup_timeout_seconds or job_type.startup_timeout_seconds
    return timeout, startup


def active_deadline_seconds(job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings) -> int:
    """The Pod's hard deadline: startup + execution + grace (the runner enforces the finer ones)."""
    timeout, startup = effective_timeouts(job, job_type)
    return startup + timeout + settings.deadline_grace_seconds


def check_requirements_allowed(job: PythonJob, job_type: PythonJobTypeSpec) -> list[str]:
    requirements = list(job.spec.requirements or [])
    if requirements and not job_type.allow_runtime_requirements:
        raise JobRejected(
            "spec.requirements",
            f"job type {job.spec.job_type_name!r} does not allow runtime requirements "
            "(use a job type with allowRuntimeRequirements: true or one with the packages preinstalled)",
        )
    return requirements


# --- ConfigMaps -------------------------------------------------------------------------------------


@cache
def runner_source() -> str:
    return importlib.resources.files("tako_runner").joinpath("runner.py").read_text(encoding="utf-8")


@cache  # the source is fixed for the process: hashing 50 kB per call was ~5% of a burst's CPU
def runner_configmap_name() -> str:
    """Named by the runner's content hash, so an upgraded operator never changes a running Pod's runner."""
    return f"tako-runner-{_short_hash(runner_source())}"


@cache  # built into every job's plan: hashing 50 kB per pass was ~4% of the event loop under a burst
def _runner_sha256() -> str:
    return hashlib.sha256(runner_source().encode()).hexdigest()


def build_runner_configmap(namespace: str) -> dict[str, Any]:
    """The runner script for every job Pod in ``namespace`` (immutable; not owned by any one job)."""
    source = runner_source()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": runner_configmap_name(),
            "namespace": namespace,
            "labels": {**COMMON_LABELS, LABEL_COMPONENT: "runner"},
            "annotations": {ANNOTATION_RUNNER_SHA: _runner_sha256()},
        },
        "immutable": True,
        "data": {"runner.py": source},
    }


def runner_config(job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings) -> dict[str, Any]:
    """The runner's ``/code/job.json``."""
    timeout, startup = effective_timeouts(job, job_type)
    requirements = check_requirements_allowed(job, job_type)
    return RunnerConfig(
        timeout=timeout,
        startup_timeout=startup,
        requirements=requirements,
        deps_dir=DEPS_DIR,
        code_path=f"{CODE_DIR}/main.py",
        input_path=f"{INPUT_DIR}/data.json",
        output_dir=OUTPUT_DIR,
        work_dir=TMP_DIR,
        max_stdout_bytes=settings.max_stdout_bytes,
        max_stderr_bytes=settings.max_stderr_bytes,
        max_artifact_bytes=settings.max_artifact_bytes,
        max_total_artifact_bytes=settings.max_total_artifact_bytes,
        environment={var.name: var.value for var in job_type.env or []},
        egress_probe=bool(requirements) and settings.egress_probe,
        live_output=True,  # TAKO-LIVE lines in the Pod log: the shim's GET /jobs/{id}/events follows them
    ).as_json_dict()


def configmap_size(data: dict[str, str]) -> int:
    """Bytes the API server counts against the 1 MiB ConfigMap limit: every key plus every value."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def build_code_configmap(
    job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings | None = None
) -> dict[str, Any]:
    """``<job>-code``: main.py (unless the code comes from spec.codeRef), job.json and data.json.

    ``job_type`` is required: job.json carries the effective timeouts and environment. Raises
    JobRejected naming the field when code and input together exceed the 1 MiB ConfigMap limit.
    """
    settings = settings or PodSettings()
    data = {
        "job.json": json.dumps(runner_config(job, job_type, settings), sort_keys=True),
        "data.json": json.dumps(job.spec.input_data or {}, separators=(",", ":"), ensure_ascii=False),
    }
    if job.spec.code is not None:
        data["main.py"] = job.spec.code
    size = configmap_size(data)
    if size > CONFIGMAP_MAX_BYTES:
        parts = ", ".join(
            f"{key} {len(key.encode()) + len(value.encode())}" for key, value in sorted(data.items())
        )
        field = "spec.inputData" if job.spec.code is None else "spec.code + spec.inputData"
        raise JobRejected(
            field,
            f"the job ConfigMap would hold {size} bytes ({parts}); the limit is {CONFIGMAP_MAX_BYTES}. "
            "Move large code to a ConfigMap and use spec.codeRef, or shrink the input.",
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _child_metadata(job, code_configmap_name(job), "code"),
        "immutable": True,
        "data": data,
    }


# --- the Pod ----------------------------------------------------------------------------------------


def _container_security_context(settings: PodSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _code_volume(job: PythonJob) -> dict[str, Any]:
    """/code: job.json from the job ConfigMap, main.py from it or from spec.codeRef (one projected volume)."""
    sources: list[dict[str, Any]] = []
    own_items = [{"key": "job.json", "path": "job.json"}]
    if job.spec.code_ref is None:
        own_items.append({"key": "main.py", "path": "main.py"})
    else:
        sources.append(
            {
                "configMap": {
                    "name": job.spec.code_ref.name,
                    "items": [{"key": job.spec.code_ref.key, "path": "main.py"}],
                }
            }
        )
    sources.insert(0, {"configMap": {"name": code_configmap_name(job), "items": own_items}})
    return {"name": "code", "projected": {"sources": sources, "defaultMode": 0o444}}


def build_pod(
    job: PythonJob, job_type: PythonJobTypeSpec, settings: PodSettings, attempt: int
) -> dict[str, Any]:
    """The gVisor Pod for one attempt of ``job``. Raises JobRejected naming the field it cannot honour."""
    requirements = check_requirements_allowed(job, job_type)
    resources = effective_resources(job, job_type, settings)
    labels = {
        **user_pod_labels(job),
        **job_labels(job),
        LABEL_COMPONENT: "job",
        LABEL_JOB_TYPE: label_safe(job.spec.job_type_name),
        LABEL_ATTEMPT: str(attempt),
    }
    if requirements:
        labels[LABEL_EGRESS] = EGRESS_INSTALL
    security = _container_security_context(settings)
    limits = {"memory": resources["memory"], "cpu": resources["cpu"]}
    mounts = [
        {"name": "runner", "mountPath": RUNNER_DIR, "readOnly": True},
        {"name": "code", "mountPath": CODE_DIR, "readOnly": True},
        {"name": "input", "mountPath": INPUT_DIR, "readOnly": True},
        {"name": "output", "mountPath": OUTPUT_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "runner", "configMap": {"name": runner_configmap_name(), "defaultMode": 0o444}},
        _code_volume(job),
        {
            "name": "input",
            "configMap": {
                "name": code_configmap_name(job),
                "items": [{"key": "data.json", "path": "data.json"}],
                "defaultMode": 0o444,
            },
        },
        {"name": "output", "emptyDir": {"sizeLimit": settings.output_size_limit}},
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
    ]
    env: list[dict[str, str]] = []
    init_containers: list[dict[str, Any]] = []
    if requirements:
        volumes.append({"name": "deps", "emptyDir": {"sizeLimit": settings.deps_size_limit}})
        mounts.append({"name": "deps", "mountPath": DEPS_DIR, "readOnly": True})
        env.append({"name": "PYTHONPATH", "value": DEPS_DIR})
        init_containers.append(
            {
                "name": INSTALL_CONTAINER,
                "image": job_type.image,
                "imagePullPolicy": job_type.image_pull_policy,
                "command": ["python3", "-I", f"{RUNNER_DIR}/runner.py", "install"],
                "workingDir": TMP_DIR,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "securityContext": dict(security),
                "volumeMounts": [
                    {"name": "runner", "mountPath": RUNNER_DIR, "readOnly": True},
                    {"name": "code", "mountPath": CODE_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": TMP_DIR},
                    {"name": "deps", "mountPath": DEPS_DIR},
                ],
            }
        )
    job_container: dict[str, Any] = {
        "name": JOB_CONTAINER,
        "image": job_type.image,
        "imagePullPolicy": job_type.image_pull_policy,
        "command": ["python3", "-I", f"{RUNNER_DIR}/runner.py", "run"],
        "workingDir": TMP_DIR,
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "securityContext": dict(security),
        "volumeMounts": mounts,
    }
    if env:
        job_container["env"] = env
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": active_deadline_seconds(job, job_type, settings),
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "fsGroup": settings.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [job_container],
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if job_type.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": ref.name} for ref in job_type.image_pull_secrets]
    if settings.runtime_class_name:
        spec["runtimeClassName"] = settings.runtime_class_name
    metadata = _child_metadata(job, pod_name(job, attempt), "job")
    metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# --- NetworkPolicies --------------------------------------------------------------------------------


def build_deny_all_policy(job: PythonJob) -> dict[str, Any]:
    """No ingress and no egress for the job's Pods (every attempt)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _child_metadata(job, deny_policy_name(job), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: label_safe(job.name)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def build_install_egress_policy(job: PythonJob, settings: PodSettings | None = None) -> dict[str, Any]:
    """While a Pod carries ``takovm.dev/egress=install``: DNS to the cluster resolver and HTTPS to public
    addresses only (never private, cluster-internal, loopback or link-local ranges, so never the cloud
    metadata address 169.254.169.254). The operator removes the label once the install step ended."""
    settings = settings or PodSettings()
    extra_v4 = [c for c in settings.extra_denied_cidrs if ":" not in c]
    extra_v6 = [c for c in settings.extra_denied_cidrs if ":" in c]
    public: list[dict[str, Any]] = [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": [*PRIVATE_IPV4_RANGES, *extra_v4]}}
    ]
    if settings.install_egress_ipv6:
        public.append({"ipBlock": {"cidr": "::/0", "except": [*PRIVATE_IPV6_RANGES, *extra_v6]}})
    dns_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}},
        "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _child_metadata(job, install_policy_name(job), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: label_safe(job.name), LABEL_EGRESS: EGRESS_INSTALL}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [dns_peer],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {"to": public, "ports": [{"protocol": "TCP", "port": 443}]},
            ],
        },
    }
