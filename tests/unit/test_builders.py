"""The pure builders: every object validates strictly against the Kubernetes schemas, and each security
promise of the job Pod and its NetworkPolicies is asserted on its own."""

from __future__ import annotations

import copy
import ipaddress
import json
import pathlib
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tako_operator.core import builders
from tako_operator.core.builders import JobRejected
from tako_operator.settings import PodSettings
from tako_runner import runner
from tako_vm.models.crd import DEFAULT_JOB_TYPE, LABEL_VALUE_PATTERN, PythonJob, PythonJobTypeSpec

K8S_VERSION = "1.32"
SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "crds" / "samples"
SETTINGS = PodSettings()
PIP_TYPE = PythonJobTypeSpec(image="python:3.11-slim", allow_runtime_requirements=True, timeout_seconds=45)


def make_job(name: str = "hello", **spec: Any) -> PythonJob:
    spec.setdefault("code", "print('hi')")
    return PythonJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "generation": 1},
            "spec": spec,
        }
    )


def validate(obj: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


def pod_for(
    job: PythonJob, job_type: PythonJobTypeSpec = DEFAULT_JOB_TYPE, attempt: int = 1
) -> dict[str, Any]:
    return validate(builders.build_pod(job, job_type, SETTINGS, attempt))


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [
        c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []) if c["name"] == name
    ]
    return found


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod["spec"]["containers"] + pod["spec"].get("initContainers", []))


_VALIDATED_PODS: dict[str, dict[str, Any]] = {}
PLAIN = make_job()
WITH_REQS = make_job("reqs", requirements=["six==1.16.0"], jobType="data-science")


# --- every built object is valid Kubernetes -------------------------------------------------------


def _sample_jobs() -> list[tuple[str, PythonJob]]:
    jobs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == "PythonJob":
            doc["metadata"].update(namespace="samples", uid=f"uid-{doc['metadata']['name']}")
            jobs.append((path.name, PythonJob.model_validate(doc)))
    return jobs


@pytest.mark.parametrize(("sample", "job"), _sample_jobs(), ids=[n for n, _ in _sample_jobs()])
def test_every_object_built_from_every_sample_is_strictly_valid(sample: str, job: PythonJob) -> None:
    job_type = PIP_TYPE if job.spec.requirements else DEFAULT_JOB_TYPE
    validate(builders.build_pod(job, job_type, SETTINGS, 1))
    validate(builders.build_pod(job, job_type, SETTINGS, 3))
    validate(builders.build_code_configmap(job, job_type, SETTINGS))
    validate(builders.build_deny_all_policy(job))
    validate(builders.build_install_egress_policy(job))


# --- the Pod's security properties, one by one -----------------------------------------------------


@pytest.mark.parametrize("job", [PLAIN, WITH_REQS], ids=["plain", "requirements"])
class TestPodSecurity:
    def build(self, job: PythonJob) -> dict[str, Any]:
        if job.name not in _VALIDATED_PODS:  # validate once per job; each test gets a fresh copy
            _VALIDATED_PODS[job.name] = pod_for(job, PIP_TYPE)
        return copy.deepcopy(_VALIDATED_PODS[job.name])

    def test_runs_in_the_gvisor_runtime_class(self, job: PythonJob) -> None:
        assert self.build(job)["spec"]["runtimeClassName"] == "gvisor"

    def test_runs_as_a_non_root_uid(self, job: PythonJob) -> None:
        pod = self.build(job)
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] > 0
        for c in all_containers(pod):
            assert c["securityContext"]["runAsNonRoot"] is True
            assert c["securityContext"]["runAsUser"] > 0
            assert c["securityContext"]["runAsGroup"] > 0

    def test_root_filesystem_is_read_only(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True

    def test_no_privilege_escalation_and_not_privileged(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["privileged"] is False

    def test_all_capabilities_dropped_none_added(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    def test_seccomp_runtime_default(self, job: PythonJob) -> None:
        pod = self.build(job)
        assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in all_containers(pod):
            assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_no_service_account_token_and_no_service_links(self, job: PythonJob) -> None:
        spec = self.build(job)["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False

    def test_no_host_namespaces(self, job: PythonJob) -> None:
        spec = self.build(job)["spec"]
        assert spec["hostNetwork"] is False
        assert spec["hostPID"] is False
        assert spec["hostIPC"] is False

    def test_requests_equal_limits_from_the_job_type(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            assert c["resources"]["requests"] == c["resources"]["limits"]
            assert c["resources"]["limits"] == {
                "memory": PIP_TYPE.resources.memory,
                "cpu": PIP_TYPE.resources.cpu,
            }

    def test_active_deadline_is_startup_plus_timeout_plus_grace(self, job: PythonJob) -> None:
        expected = (
            PIP_TYPE.startup_timeout_seconds + PIP_TYPE.timeout_seconds + SETTINGS.deadline_grace_seconds
        )
        assert self.build(job)["spec"]["activeDeadlineSeconds"] == expected

    def test_restart_policy_never(self, job: PythonJob) -> None:
        assert self.build(job)["spec"]["restartPolicy"] == "Never"

    def test_code_input_and_runner_are_mounted_read_only(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            for mount in c["volumeMounts"]:
                if mount["mountPath"] in ("/runner", "/code", "/input"):
                    assert mount.get("readOnly") is True, (c["name"], mount)

    def test_writable_volumes_are_size_limited_empty_dirs(self, job: PythonJob) -> None:
        pod = self.build(job)
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for c in all_containers(pod):
            for mount in c["volumeMounts"]:
                if not mount.get("readOnly"):
                    assert volumes[mount["name"]]["emptyDir"]["sizeLimit"], mount
        assert volumes["output"]["emptyDir"] == {"sizeLimit": SETTINGS.output_size_limit}
        assert volumes["tmp"]["emptyDir"] == {"sizeLimit": SETTINGS.tmp_size_limit}

    def test_only_emptydir_configmap_and_projected_volumes(self, job: PythonJob) -> None:
        for volume in self.build(job)["spec"]["volumes"]:
            kinds = set(volume) - {"name"}
            assert kinds <= {"emptyDir", "configMap", "projected"}, volume

    def test_owned_by_the_job_as_controller(self, job: PythonJob) -> None:
        (ref,) = self.build(job)["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "takovm.dev/v1alpha1", "kind": "PythonJob", "name": job.name,
            "uid": job.metadata["uid"], "controller": True, "blockOwnerDeletion": True,
        }  # fmt: skip

    def test_no_environment_leaks_beyond_pythonpath(self, job: PythonJob) -> None:
        for c in all_containers(self.build(job)):
            assert {e["name"] for e in c.get("env", [])} <= {"PYTHONPATH"}
            assert "envFrom" not in c


def test_runtime_class_comes_from_settings() -> None:
    pod = builders.build_pod(PLAIN, DEFAULT_JOB_TYPE, PodSettings(runtime_class_name="gvisor-systrap"), 1)
    assert pod["spec"]["runtimeClassName"] == "gvisor-systrap"


def test_settings_refuse_a_root_uid() -> None:
    with pytest.raises(ValueError, match="non-root"):
        PodSettings(run_as_user=0)


def test_pod_layout_the_runner_expects() -> None:
    pod = pod_for(PLAIN)
    job = container(pod, "job")
    assert job["command"] == ["python3", "-I", "/runner/runner.py", "run"]
    assert "initContainers" not in pod["spec"]
    assert "env" not in job
    mounts = {m["mountPath"]: m["name"] for m in job["volumeMounts"]}
    assert mounts == {
        "/runner": "runner",
        "/code": "code",
        "/input": "input",
        "/output": "output",
        "/tmp": "tmp",
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["runner"]["configMap"]["name"] == builders.runner_configmap_name()
    (own,) = volumes["code"]["projected"]["sources"]
    assert own["configMap"] == {
        "name": "hello-code",
        "items": [{"key": "job.json", "path": "job.json"}, {"key": "main.py", "path": "main.py"}],
    }
    assert volumes["input"]["configMap"]["items"] == [{"key": "data.json", "path": "data.json"}]


def test_requirements_add_an_install_init_container_with_writable_deps() -> None:
    pod = pod_for(WITH_REQS, PIP_TYPE)
    install = container(pod, "install")
    assert install["command"] == ["python3", "-I", "/runner/runner.py", "install"]
    assert {"name": "deps", "mountPath": "/deps"} in install["volumeMounts"]
    assert not any(m["mountPath"] in ("/output", "/input") for m in install["volumeMounts"])
    job = container(pod, "job")
    assert {"name": "deps", "mountPath": "/deps", "readOnly": True} in job["volumeMounts"]
    assert job["env"] == [{"name": "PYTHONPATH", "value": "/deps"}]
    assert pod["metadata"]["labels"]["takovm.dev/egress"] == "install"
    assert "takovm.dev/egress" not in pod_for(PLAIN)["metadata"]["labels"]


def test_requirements_rejected_when_the_job_type_disallows_them() -> None:
    with pytest.raises(
        JobRejected, match=r"spec.requirements: job type 'data-science' does not allow"
    ) as info:
        builders.build_pod(WITH_REQS, DEFAULT_JOB_TYPE, SETTINGS, 1)
    assert info.value.field == "spec.requirements"


def test_code_ref_is_projected_as_main_py() -> None:
    job = PythonJob.model_validate(
        {
            "metadata": {"name": "big", "namespace": "a", "uid": "u"},
            "spec": {"codeRef": {"name": "lib", "key": "x.py"}},
        }
    )
    pod = pod_for(job)
    code = next(v for v in pod["spec"]["volumes"] if v["name"] == "code")
    own, ref = code["projected"]["sources"]
    assert own["configMap"]["items"] == [{"key": "job.json", "path": "job.json"}]
    assert ref["configMap"] == {"name": "lib", "items": [{"key": "x.py", "path": "main.py"}]}
    assert "main.py" not in builders.build_code_configmap(job, DEFAULT_JOB_TYPE)["data"]


def test_spec_resources_override_the_job_type_within_bounds() -> None:
    job = make_job(resources={"memory": "128Mi", "cpu": "500m"})
    limits = container(pod_for(job), "job")["resources"]["limits"]
    assert limits == {"memory": "128Mi", "cpu": "500m"}
    with pytest.raises(
        JobRejected, match=r"spec.resources.memory: 64Gi is outside the allowed range 64Mi..32Gi"
    ):
        builders.build_pod(make_job(resources={"memory": "64Gi"}), DEFAULT_JOB_TYPE, SETTINGS, 1)
    with pytest.raises(JobRejected, match=r"spec.resources.cpu"):
        builders.build_pod(make_job(resources={"cpu": "50m"}), DEFAULT_JOB_TYPE, SETTINGS, 1)


@pytest.mark.parametrize(
    ("text", "value"), [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("500m", 0.5), ("2", 2), ("1.5G", 1.5e9)]
)
def test_parse_quantity(text: str, value: float) -> None:
    assert float(builders.parse_quantity(text)) == pytest.approx(value)


def test_job_timeout_overrides_the_job_type() -> None:
    pod = pod_for(make_job(timeoutSeconds=7, startupTimeoutSeconds=11))
    assert pod["spec"]["activeDeadlineSeconds"] == 7 + 11 + SETTINGS.deadline_grace_seconds


# --- labels ---------------------------------------------------------------------------------------


def test_user_pod_labels_are_copied_next_to_the_reserved_ones() -> None:
    labels = pod_for(make_job(podLabels={"team": "analytics", "example.com/cost": "x1"}))["metadata"][
        "labels"
    ]
    assert labels["team"] == "analytics"
    assert labels["example.com/cost"] == "x1"
    assert labels["takovm.dev/job"] == "hello"
    assert labels["takovm.dev/attempt"] == "1"


def test_a_reserved_user_label_is_rejected_never_copied() -> None:
    job = make_job()
    # Bypass the model's own check, as a hand-crafted object read from the API could.
    job.spec.pod_labels = {"takovm.dev/job": "someone-else"}
    with pytest.raises(JobRejected, match=r"reserved prefix takovm.dev/") as info:
        builders.build_pod(job, DEFAULT_JOB_TYPE, SETTINGS, 1)
    assert info.value.field == "spec.podLabels"


def test_long_names_stay_within_kubernetes_limits_and_are_deterministic() -> None:
    name = "j" * 250
    job = make_job(name)
    pod = pod_for(job, attempt=12)
    assert len(pod["metadata"]["name"]) <= 253
    assert len(pod["metadata"]["labels"]["takovm.dev/job"]) <= 63
    assert pod["metadata"]["name"] == builders.pod_name(job, 12)
    assert builders.pod_name(job, 12) != builders.pod_name(make_job("j" * 249 + "k"), 12)
    validate(builders.build_install_egress_policy(job))


def test_child_names() -> None:
    assert builders.pod_name(PLAIN, 1) == "hello-pod"
    assert builders.pod_name(PLAIN, 2) == "hello-pod-a2"
    assert builders.build_code_configmap(PLAIN, DEFAULT_JOB_TYPE)["metadata"]["name"] == "hello-code"
    assert builders.build_deny_all_policy(PLAIN)["metadata"]["name"] == "hello-deny"
    assert builders.build_install_egress_policy(PLAIN)["metadata"]["name"] == "hello-install-egress"
    with pytest.raises(ValueError, match="attempt"):
        builders.pod_name(PLAIN, 0)


def test_children_need_the_owner_uid() -> None:
    job = PythonJob.model_validate({"metadata": {"name": "x"}, "spec": {"code": "1"}})
    with pytest.raises(ValueError, match=r"metadata.uid"):
        builders.build_deny_all_policy(job)


# --- NetworkPolicies ------------------------------------------------------------------------------


def _selects(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())


def test_deny_all_policy_blocks_every_direction_for_every_attempt() -> None:
    policy = validate(builders.build_deny_all_policy(WITH_REQS))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == []
    for attempt in (1, 2, 5):
        assert _selects(policy, pod_for(WITH_REQS, PIP_TYPE, attempt))
    assert not _selects(policy, pod_for(make_job("other")))


def test_install_policy_selects_the_pod_only_while_it_carries_the_install_label() -> None:
    policy = validate(builders.build_install_egress_policy(WITH_REQS))
    pod = pod_for(WITH_REQS, PIP_TYPE)
    assert _selects(policy, pod)
    del pod["metadata"]["labels"]["takovm.dev/egress"]  # what the operator does after the install
    assert not _selects(policy, pod)
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert "ingress" not in policy["spec"]


def _allowed(policy: dict[str, Any], address: str, port: int, protocol: str = "TCP") -> bool:
    """Whether an ipBlock rule of the policy lets traffic to address:port out."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        if not any(p["port"] == port and p["protocol"] == protocol for p in rule["ports"]):
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None or ip.version != ipaddress.ip_network(block["cidr"]).version:
                continue
            inside = ip in ipaddress.ip_network(block["cidr"])
            excepted = any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
            if inside and not excepted:
                return True
    return False


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "10.96.0.1", "10.0.0.10", "172.16.5.4", "192.168.1.1", "100.64.0.1", "127.0.0.1",
     "100.100.100.200", "168.63.129.16", "0.0.0.0",
     "fd00::1", "fe80::1", "::1", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"],
)  # fmt: skip
def test_install_egress_never_reaches_internal_ranges_or_cloud_metadata(address: str) -> None:
    policy = builders.build_install_egress_policy(WITH_REQS)
    for port in (443, 53, 80):
        assert not _allowed(policy, address, port)
        assert not _allowed(policy, address, port, "UDP")


@pytest.mark.parametrize("address", ["151.101.0.223", "8.8.8.8", "2a04:4e42::223"])
def test_install_egress_allows_public_https_only(address: str) -> None:
    policy = builders.build_install_egress_policy(WITH_REQS)
    assert _allowed(policy, address, 443)
    assert not _allowed(policy, address, 80)
    assert not _allowed(policy, address, 22)


def test_install_egress_allows_dns_only_to_the_cluster_resolver() -> None:
    policy = builders.build_install_egress_policy(WITH_REQS)
    dns_rules = [r for r in policy["spec"]["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert len(dns_rules) == 1
    (peer,) = dns_rules[0]["to"]
    assert peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    assert sorted(p["protocol"] for p in dns_rules[0]["ports"]) == ["TCP", "UDP"]
    ports = {p["port"] for r in policy["spec"]["egress"] for p in r["ports"]}
    assert ports == {53, 443}


# --- ConfigMaps -----------------------------------------------------------------------------------


def test_code_configmap_holds_code_input_and_the_runner_config() -> None:
    job = make_job(inputData={"numbers": [1, 2]}, timeoutSeconds=9)
    cm = validate(builders.build_code_configmap(job, PIP_TYPE, SETTINGS))
    assert cm["immutable"] is True
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-hello"
    assert cm["data"]["main.py"] == "print('hi')"
    assert json.loads(cm["data"]["data.json"]) == {"numbers": [1, 2]}
    config = json.loads(cm["data"]["job.json"])
    assert config["timeout"] == 9
    assert config["startup_timeout"] == PIP_TYPE.startup_timeout_seconds
    assert config["deps_dir"] == "/deps"
    assert config["egress_probe"] is False


def test_runner_config_only_uses_keys_the_runner_knows() -> None:
    typed = PythonJobTypeSpec(
        image="x", allow_runtime_requirements=True, env=[{"name": "OMP_NUM_THREADS", "value": "2"}]
    )
    config = json.loads(builders.build_code_configmap(WITH_REQS, typed, SETTINGS)["data"]["job.json"])
    assert set(config) <= set(runner.DEFAULTS)
    assert config["requirements"] == ["six==1.16.0"]
    assert config["egress_probe"] is True
    assert config["environment"] == {"OMP_NUM_THREADS": "2"}
    assert config["timeout"] == typed.timeout_seconds
    assert config["max_stdout_bytes"] == 65536


def test_configmap_size_arithmetic_against_the_1mib_limit() -> None:
    # keys and values both count; ~1 MiB of input plus code overflows with a message naming the sizes
    big_input = {"blob": "x" * (builders.CONFIGMAP_MAX_BYTES - 300)}
    job = make_job(inputData=big_input, code="print(1)\n" * 100)
    with pytest.raises(
        JobRejected, match=r"spec.code \+ spec.inputData: the job ConfigMap would hold \d+ bytes"
    ) as info:
        builders.build_code_configmap(job, DEFAULT_JOB_TYPE)
    assert "data.json" in str(info.value) and "main.py" in str(info.value) and "1048576" in str(info.value)
    fits = make_job(inputData={"blob": "x" * (builders.CONFIGMAP_MAX_BYTES - 2000)}, code="print(1)")
    cm = builders.build_code_configmap(fits, DEFAULT_JOB_TYPE)
    assert builders.configmap_size(cm["data"]) <= builders.CONFIGMAP_MAX_BYTES
    assert builders.configmap_size({"ab": "cde"}) == 5
    assert builders.configmap_size({"k": "é"}) == 3  # UTF-8 bytes, not characters


def test_runner_configmap_ships_the_runner_and_is_named_by_its_content() -> None:
    cm = validate(builders.build_runner_configmap("team-a"))
    source = pathlib.Path(runner.__file__).read_text()
    assert cm["data"] == {"runner.py": source}
    assert cm["immutable"] is True
    assert cm["metadata"]["namespace"] == "team-a"
    assert cm["metadata"]["name"] == builders.runner_configmap_name()
    assert cm["metadata"]["name"].startswith("tako-runner-")
    assert "ownerReferences" not in cm["metadata"]


def test_builders_and_status_import_neither_kopf_nor_the_kubernetes_client() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, tako_operator.core.builders, tako_operator.core.status, tako_operator.settings\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes', 'aiohttp'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_malformed_user_label_key_is_rejected() -> None:
    job = make_job()
    job.spec.pod_labels = {"bad key!": "v"}  # the CRD cannot check key syntax (CEL cost); the builder does
    with pytest.raises(JobRejected, match="not a valid label"):
        builders.build_pod(job, DEFAULT_JOB_TYPE, SETTINGS, 1)


# --- properties over arbitrary names ----------------------------------------------------------------


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
job_names = st.from_regex(DNS_SUBDOMAIN, fullmatch=True).filter(lambda n: len(n) <= 253)


@hypothesis_settings(max_examples=40, deadline=None)
@given(name=job_names, attempt=st.integers(min_value=1, max_value=100))
def test_child_names_are_always_valid_and_distinct(name: str, attempt: int) -> None:
    names = [
        builders.child_name(name, s) for s in ("code", "deny", "install-egress", "pod", f"pod-a{attempt}")
    ]
    for child in names:
        assert len(child) <= 253
        assert DNS_SUBDOMAIN.fullmatch(child), child
    assert len(set(names)) == len(names)


@hypothesis_settings(max_examples=60, deadline=None)
@given(value=st.text(max_size=300))
def test_label_safe_always_yields_a_valid_label_value(value: str) -> None:
    label = builders.label_safe(value)
    assert len(label) <= 63
    assert re.fullmatch(LABEL_VALUE_PATTERN, label), label


def test_image_pull_secrets_come_from_the_job_type() -> None:
    typed = PythonJobTypeSpec.model_validate(
        {"image": "registry.example.com/x:1", "imagePullSecrets": [{"name": "reg"}]}
    )
    assert pod_for(PLAIN, typed)["spec"]["imagePullSecrets"] == [{"name": "reg"}]
    assert "imagePullSecrets" not in pod_for(PLAIN)["spec"]


# --- golden snapshots: a reviewer sees every change to the built manifests in the diff -----------------

GOLDEN = pathlib.Path(__file__).parent / "test_builders_golden"


def _golden_objects() -> dict[str, dict[str, Any]]:
    pod = builders.build_pod(WITH_REQS, PIP_TYPE, SETTINGS, 1)
    # the runner ConfigMap is named by the runner's hash; keep the snapshot independent of runner edits
    for volume in pod["spec"]["volumes"]:
        if volume["name"] == "runner":
            volume["configMap"]["name"] = "tako-runner-<sha256[:10]>"
    return {
        "pod-with-requirements.yaml": pod,
        "code-configmap.yaml": builders.build_code_configmap(WITH_REQS, PIP_TYPE, SETTINGS),
        "deny-all-policy.yaml": builders.build_deny_all_policy(WITH_REQS),
        "install-egress-policy.yaml": builders.build_install_egress_policy(WITH_REQS),
    }


@pytest.mark.parametrize("name", sorted(_golden_objects()))
def test_built_objects_match_their_golden_snapshot(name: str) -> None:
    """Regenerate after an intended change with TAKO_UPDATE_GOLDEN=1 and review the diff."""
    import os

    rendered = yaml.safe_dump(_golden_objects()[name], sort_keys=False, width=110)
    path = GOLDEN / name
    if os.environ.get("TAKO_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert path.read_text() == rendered, f"{name} changed; if intended, rerun with TAKO_UPDATE_GOLDEN=1"


def test_extra_denied_cidrs_are_excluded_too() -> None:
    settings = PodSettings(extra_denied_cidrs=("203.0.113.0/24", "2001:db8::/32"))
    policy = validate(builders.build_install_egress_policy(WITH_REQS, settings))
    assert not _allowed(policy, "203.0.113.7", 443)
    assert not _allowed(policy, "2001:db8::1", 443)
    assert _allowed(policy, "198.51.100.7", 443)
