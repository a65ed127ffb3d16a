"""The Helm chart, rendered and linted by Helm's own Go library (helm-python-sdk, Helm v4).

Every rendered object is checked against the upstream Kubernetes schemas in strict mode
(kubernetes-validate); custom resources against the CRD that the chart ships.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tako_operator.io.metrics import Metrics
from tako_shim.metrics import ShimMetrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tako-vm"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "tako", "tako-system"

Manifest = dict[str, Any]


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Render the chart as `helm template tako charts/tako-vm -n tako-system` would."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def chart_crds() -> list[Manifest]:
    docs: list[Manifest] = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def production_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return loaded


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Manifest], kind: str, name: str, namespace: str | None = None) -> Manifest:
    found = [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"]["name"] == name
        and (namespace is None or obj["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, str, Manifest]]:
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj["kind"], obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["kind"], obj["metadata"]["name"], obj["spec"]


@pytest.fixture(scope="module")
def default_objects() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def production_objects() -> list[Manifest]:
    return render(production_values())


# --- rendering, lint and schema validation of every object -------------------------------------


def validate_strict(objects: list[Manifest]) -> None:
    """Built-in kinds against the upstream schemas (strict: unknown fields fail); CRs against their CRD."""
    crd_schemas = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"]): version["schema"]["openAPIV3Schema"]
        for crd in chart_crds()
        for version in crd["spec"]["versions"]
    }
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        if (group, obj["kind"]) in crd_schemas:
            jsonschema.validate(obj, crd_schemas[(group, obj["kind"])])
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_default_values_render_and_every_object_passes_strict_validation(
    default_objects: list[Manifest],
) -> None:
    kinds = {obj["kind"] for obj in default_objects}
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Namespace",
        "Secret",
    } <= kinds
    assert "KopfPeering" not in kinds, "replicas elect a leader through a Lease, not kopf peering"
    validate_strict(default_objects)


def test_production_values_render_and_every_object_passes_strict_validation(
    production_objects: list[Manifest],
) -> None:
    assert len(of_kind(production_objects, "Namespace")) == 3
    assert len(of_kind(production_objects, "RuntimeClass")) == 1
    assert not of_kind(production_objects, "Secret"), "an existingSecret must not be shadowed"
    validate_strict(production_objects)


def test_chart_crds_pass_strict_validation() -> None:
    crds = chart_crds()
    names = {crd["metadata"]["name"] for crd in crds}
    assert names == {"pythonjobs.takovm.dev", "pythonjobtypes.takovm.dev", "pythonsessions.takovm.dev"}
    for crd in crds:
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lint_strict_reports_no_warnings_or_errors(values_file: pathlib.Path | None) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_the_chart_crds_are_identical_to_the_repository_crds() -> None:
    repo_crds = sorted((ROOT / "crds").glob("*.yaml"))
    assert repo_crds, "crds/ holds no CRD files"
    for source in repo_crds:
        copy = CHART / "crds" / source.name
        assert copy.exists(), f"{copy} missing: run scripts/sync-chart-crds.sh"
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs: run scripts/sync-chart-crds.sh"
    takovm_in_chart = {p.name for p in (CHART / "crds").glob("*takovm.dev.yaml")}
    assert takovm_in_chart == {p.name for p in repo_crds}, "the chart ships a CRD that crds/ no longer has"


# --- RBAC: exact rules, no wildcards ------------------------------------------------------------

OPERATOR_NAMESPACED_RULES = {
    ("takovm.dev", "pythonjobs"): {"get", "list", "watch", "patch", "delete"},
    ("takovm.dev", "pythonjobs/status"): {"get", "patch"},
    ("takovm.dev", "pythonjobtypes"): {"get", "list", "watch"},
    ("takovm.dev", "pythonjobtypes/status"): {"patch"},  # Ready when the type is usable
    ("", "pods"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "configmaps"): {"create", "get", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"create", "get", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # Owner references with blockOwnerDeletion (OwnerReferencesPermissionEnforcement, OpenShift)
    ("takovm.dev", "pythonjobs/finalizers"): {"update"},
    # PythonSessions: watched, status written, deleted after their retention; their Pod and
    # NetworkPolicy (owned, blockOwnerDeletion) use the rules above.
    ("takovm.dev", "pythonsessions"): {"get", "list", "watch", "delete"},
    ("takovm.dev", "pythonsessions/status"): {"patch"},
    ("takovm.dev", "pythonsessions/finalizers"): {"update"},
}
SHIM_NAMESPACED_RULES = {
    ("takovm.dev", "pythonjobs"): {"create", "get", "list", "watch", "patch"},
    ("takovm.dev", "pythonjobs/status"): {"get"},
    ("takovm.dev", "pythonjobtypes"): {"get", "list"},
    ("", "pods/log"): {"get"},  # live output: GET /jobs/{id}/events follows the job Pod's log
    # POST /sessions creates, GET lists/reads, execute/DELETE patch annotations (never the status)
    ("takovm.dev", "pythonsessions"): {"create", "get", "list", "patch"},
    ("", "events"): {"create"},  # one Event per session execution
    ("", "configmaps"): {"create", "list"},  # one record per session execution (GET /executions)
}


def flatten_rules(role: Manifest) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, failing on anything broader than a plain list (resourceNames
    only narrow a rule: the leader-election Lease)."""
    flat: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "*" not in rule.get("resourceNames", [])
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard {field} in {role['kind']} {role['metadata']['name']}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def test_operator_rbac_is_exactly_what_reconcile_needs(production_objects: list[Manifest]) -> None:
    assert of_kind(production_objects, "ClusterRole") == [], "the operator needs nothing cluster-wide"
    assert of_kind(production_objects, "ClusterRoleBinding") == []
    for tenant in ("tenant-alpha", "tenant-beta", "tenant-gamma"):
        role = one(production_objects, "Role", "tako-operator", tenant)
        assert flatten_rules(role) == OPERATOR_NAMESPACED_RULES
        binding = one(production_objects, "RoleBinding", "tako-operator", tenant)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "tako-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tako-operator", "namespace": NAMESPACE}
        ]


def test_shim_rbac_is_limited_to_pythonjobs_in_tenant_namespaces(production_objects: list[Manifest]) -> None:
    shim_roles = [r for r in of_kind(production_objects, "Role") if r["metadata"]["name"] == "tako-shim"]
    assert sorted(r["metadata"]["namespace"] for r in shim_roles) == [
        "tenant-alpha",
        "tenant-beta",
        "tenant-gamma",
    ]
    for role in shim_roles:
        assert flatten_rules(role) == SHIM_NAMESPACED_RULES
    shim_cluster_bindings = [
        b
        for b in of_kind(production_objects, "ClusterRoleBinding")
        if any(s["name"] == "tako-shim" for s in b["subjects"])
    ]
    assert shim_cluster_bindings == [], "the shim must hold no cluster-wide permission"


def test_no_role_anywhere_uses_a_wildcard_or_touches_secrets(default_objects: list[Manifest]) -> None:
    roles = of_kind(default_objects, "Role")
    assert roles
    for role in roles:
        resources = flatten_rules(role)
        assert not any(resource == "secrets" for _, resource in resources)


def test_rbac_create_false_renders_no_rbac() -> None:
    objects = render({"rbac": {"create": False}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in objects}


# --- Pods: securityContext, probes, resources ----------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_every_container_runs_non_root_read_only_without_privileges(values_file: pathlib.Path | None) -> None:
    objects = render(yaml.safe_load(values_file.read_text()) if values_file else None)
    specs = list(pod_specs(objects))
    assert sorted(kind for kind, _, _ in specs) == ["Deployment", "Deployment", "Pod"]  # + the helm test Pod
    for kind, name, spec in specs:
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["runAsNonRoot"] is True, name
            assert context["privileged"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            if kind == "Deployment":
                assert "livenessProbe" in container, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name


def test_operator_replicas_share_arguments_and_elect_a_leader_through_a_lease(
    production_objects: list[Manifest],
) -> None:
    deployment = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == ("registry.example.com/tako/tako-vm-operator@sha256:" + "1" * 64)
    # Identical for every replica: no namespace, peering or priority flags (kopf would pause peers
    # of equal priority); the namespaces come from the environment, the leader from a Lease.
    assert container["args"] == [
        "operator",
        "--leader-election=tako-operator",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["TAKO_OPERATOR_NAMESPACES"]["value"] == "tenant-alpha,tenant-beta,tenant-gamma"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MALLOC_ARENA_MAX"]["value"] == "2"  # as the operator bench runs it
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert deployment["spec"]["replicas"] == 3
    assert not of_kind(production_objects, "KopfPeering")
    role = one(production_objects, "Role", "tako-operator-leader-election", NAMESPACE)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["tako-operator"],
            "verbs": ["get", "patch"],
        },
    ]
    binding = one(production_objects, "RoleBinding", "tako-operator-leader-election", NAMESPACE)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tako-operator", "namespace": NAMESPACE}
    ]


def test_shim_runs_the_kubernetes_backend_with_api_keys_from_a_secret(
    production_objects: list[Manifest],
) -> None:
    deployment = one(production_objects, "Deployment", "tako-shim", NAMESPACE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["server", "--backend=kubernetes"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TAKO_VM_API_KEYS"]["valueFrom"] == {"secretKeyRef": {"name": "tako-api-keys", "key": "keys"}}
    assert env["TAKO_VM_API_AUTH_ENABLED"]["value"] == "true"
    assert env["TAKO_VM_SERVER_HOST"]["value"] == "0.0.0.0"
    assert env["TAKO_VM_KUBERNETES__NAMESPACE"]["value"] == "tenant-alpha"
    assert "value" not in env["TAKO_VM_API_KEYS"], "API keys never appear in the Deployment"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service = one(production_objects, "Service", "tako-shim", NAMESPACE)
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_default_install_generates_an_api_key_secret_the_shim_reads(default_objects: list[Manifest]) -> None:
    secret = one(default_objects, "Secret", "tako-tako-vm-api-keys", NAMESPACE)
    assert len(secret["data"]["api-keys"]) > 40
    shim = one(default_objects, "Deployment", "tako-tako-vm-shim", NAMESPACE)
    env = {e["name"]: e for e in shim["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TAKO_VM_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "tako-tako-vm-api-keys"


def test_pod_disruption_budgets_only_with_more_than_one_replica() -> None:
    single = render({"operator": {"replicaCount": 1}, "shim": {"replicaCount": 1}})
    assert of_kind(single, "PodDisruptionBudget") == []
    many = render({"operator": {"replicaCount": 2}, "shim": {"replicaCount": 3}})
    budgets = {p["metadata"]["name"]: p["spec"] for p in of_kind(many, "PodDisruptionBudget")}
    assert budgets["tako-tako-vm-operator"]["maxUnavailable"] == 1
    assert budgets["tako-tako-vm-shim"]["minAvailable"] == 1


# --- namespaces, network policies, runtime class --------------------------------------------------


def test_job_namespaces_enforce_pod_security_restricted_and_survive_uninstall(
    production_objects: list[Manifest],
) -> None:
    for namespace in of_kind(production_objects, "Namespace"):
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"
        assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert of_kind(render({"jobs": {"createNamespaces": False}}), "Namespace") == []


def _standby_push_rule(values: dict[str, Any]) -> dict[str, Any]:
    peers = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "podSelector": {"matchLabels": {"takovm.dev/standby": "waiting"}},
        }
        for ns in values["jobs"]["namespaces"]
    ]
    return {"ports": [{"protocol": "TCP", "port": 8790}], "to": peers}


def _session_rule(values: dict[str, Any]) -> dict[str, Any]:
    peers = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "podSelector": {"matchExpressions": [{"key": "takovm.dev/session", "operator": "Exists"}]},
        }
        for ns in values["jobs"]["namespaces"]
    ]
    return {"ports": [{"protocol": "TCP", "port": 8791}], "to": peers}


def test_standby_pods_value_and_push_settings_reach_the_operator(production_objects: list[Manifest]) -> None:
    from tako_operator.settings import settings_from_env

    (job_type, *_) = of_kind(render({"jobs": {"defaultJobType": {"standbyPods": 3}}}), "PythonJobType")
    assert job_type["spec"]["standbyPods"] == 3
    assert all(t["spec"]["standbyPods"] == 0 for t in of_kind(production_objects, "PythonJobType"))
    deployment = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = settings_from_env({k: v for k, v in env.items() if v is not None}).standby
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert settings.operator_pod_labels == labels and settings.operator_namespace == NAMESPACE
    assert settings.port == 8790


def test_network_policies_limit_operator_and_shim_to_dns_and_the_api_server(
    production_objects: list[Manifest],
) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(production_objects, "NetworkPolicy")}
    assert set(policies) == {"tako-operator", "tako-shim"}
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        dns, api, *extra = spec["egress"]
        # the operator also pushes jobs to waiting standby Pods, the shim sends code to session Pods,
        # and nowhere else in job namespaces
        wanted = (
            _session_rule(production_values())
            if name == "tako-shim"
            else _standby_push_rule(production_values())
        )
        assert extra == [wanted]
        assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
        assert api == {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        }
    assert policies["tako-shim"]["ingress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 8000}],
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}},
                {
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "tako-vm",
                            "app.kubernetes.io/instance": "tako",
                            "app.kubernetes.io/component": "test",
                        }
                    }
                },
            ],
        },
        # the metrics scrapers reach the shim's port too (its GET /metrics)
        {
            "ports": [{"protocol": "TCP", "port": 8000}],
            "from": production_values()["networkPolicy"]["metricsIngressFrom"],
        },
    ]
    assert {p["port"] for p in policies["tako-operator"]["ingress"][0]["ports"]} == {8080, 9090}
    assert of_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_optional_gvisor_runtime_class(
    production_objects: list[Manifest], default_objects: list[Manifest]
) -> None:
    assert of_kind(default_objects, "RuntimeClass") == []
    runtime_class = one(production_objects, "RuntimeClass", "gvisor")
    assert runtime_class["handler"] == "runsc"
    assert runtime_class["scheduling"]["nodeSelector"] == {"sandbox.tako-vm.dev/gvisor": "true"}


def test_notes_print_how_to_call_the_api() -> None:
    text = notes()
    assert "kubectl -n tako-system port-forward svc/tako-tako-vm-shim 8000:8000" in text
    assert 'curl -s -X POST $TAKO_VM_URL/execute -H "X-API-Key: $TAKO_VM_API_KEY"' in text
    assert "tako_vm.configure(" in text
    assert "get secret tako-tako-vm-api-keys" in text
    # The printed pipeline yields the bare key of the first "key=tenant" entry.
    import subprocess

    command = next(line for line in text.splitlines() if "export TAKO_VM_API_KEY=" in line)
    pipeline = command.split("| ", 1)[1].rstrip(")")
    encoded = base64.b64encode(("k" * 20 + "=tako-jobs," + "d" * 20).encode()).decode()
    result = subprocess.run(
        ["sh", "-c", f"echo {encoded} | {pipeline}"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "k" * 20


# --- values.schema.json ------------------------------------------------------------------------------


def leaf_paths(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaf_paths(value, (*prefix, key))
    else:
        yield prefix


def schema_at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    root = schema
    node: dict[str, Any] | None = schema
    for key in path:
        while node is not None and "$ref" in node:
            node = root["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if node is None:
            return None
        properties = node.get("properties", {})
        if key in properties:
            node = properties[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_every_default_value_is_described_by_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        schema, defaults = chart.schema, chart.values
    assert schema is not None
    for path in leaf_paths(defaults):
        assert schema_at(schema, path) is not None, f"values.schema.json does not describe {'.'.join(path)}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jobs": {"namespaces": ["Team_A"]}}, "at '/jobs/namespaces/0'"),
        ({"jobs": {"allNamespaces": "yes"}}, "at '/jobs/allNamespaces'"),
        ({"operator": {"terminationGracePeriodSeconds": 1}}, "at '/operator/terminationGracePeriodSeconds'"),
        (
            {"jobs": {"namespaces": ["Tenant_A"]}},
            "at '/jobs/namespaces/0': 'Tenant_A' does not match pattern",
        ),
        ({"jobs": {"podSecurityLevel": "privileged"}}, "at '/jobs/podSecurityLevel'"),
        ({"operator": {"replicaCount": 0}}, "at '/operator/replicaCount': minimum: got 0, want 1"),
        ({"shim": {"securityContext": {"allowPrivilegeEscalation": True}}}, "allowPrivilegeEscalation"),
        ({"shim": {"securityContext": {"readOnlyRootFilesystem": False}}}, "readOnlyRootFilesystem"),
        ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
        ({"operator": {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}}, "capabilities/add"),
        ({"shim": {"port": 80}}, "at '/shim/port': minimum: got 80, want 1,024"),
        ({"shim": {"service": {"type": "ExternalName"}}}, "at '/shim/service/type'"),
        ({"operator": {"image": {"digest": "latest"}}}, "at '/operator/image/digest'"),
        ({"shim": {"config": {"maxTimeout": 100000}}}, "at '/shim/config/maxTimeout': maximum"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        (
            {"apiKeys": {"value": "short=tako-jobs"}},
            "at '/apiKeys/value': 'short=tako-jobs' does not match pattern",
        ),
        ({"apiKeys": {"value": "k" * 20 + "=Not_A_Namespace"}}, "at '/apiKeys/value'"),
        ({"shim": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
    ],
)
def test_invalid_values_are_rejected_with_a_message_naming_the_field(
    values: dict[str, Any], message: str
) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as raised:
            chart.validate_schema(values)
        assert message in str(raised.value)
        # Rendering (helm template / install) enforces the same schema.
        with pytest.raises(helm.HelmError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- the rendered configuration is what the processes actually read -----------------------------------


def test_shim_environment_is_accepted_by_the_real_shim_configuration(
    production_objects: list[Manifest],
) -> None:
    """Unknown TAKO_VM_* names are silently ignored by the shim, so every name must be a real key."""
    from tako_shim.config import Settings, load_settings

    deployment = one(production_objects, "Deployment", "tako-shim", NAMESPACE)
    env: dict[str, str] = {}
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if entry["name"] == "TAKO_VM_API_KEYS":
            env[entry["name"]] = "k" * 20 + "=tenant-beta," + "d" * 20  # what the Secret would hold
        elif entry["name"] == "TAKO_VM_SESSION_TOKEN_KEY":
            assert entry["valueFrom"] == {"secretKeyRef": {"name": "tako-session-key", "key": "key"}}
            env[entry["name"]] = "s" * 64
        else:
            env[entry["name"]] = entry["value"]
    for name in env:
        if name.startswith("TAKO_VM_"):
            assert name[len("TAKO_VM_") :].lower().split("__")[0] in Settings.model_fields, name
    settings = load_settings(env=env)
    assert settings.server_host == "0.0.0.0"
    assert settings.server_port == 8000
    assert settings.api_auth_enabled is True
    assert settings.api_keys == {"k" * 20: "tenant-beta", "d" * 20: "default"}
    assert settings.kubernetes.in_cluster is True
    assert settings.kubernetes.namespace == "tenant-alpha"
    assert (settings.default_timeout, settings.max_timeout) == (60, 900)
    assert settings.allow_runtime_requirements is True
    assert (settings.api_rate_limit_requests, settings.api_rate_limit_window_seconds) == (600, 60)
    assert str(settings.data_dir).startswith("/tmp/"), "the root filesystem is read-only"
    assert settings.session_token_key == "s" * 64
    assert (settings.session_max_per_tenant, settings.session_max_ttl_seconds) == (20, 86400)
    assert (settings.session_max_memory_limit, settings.session_interrupt_grace_seconds) == ("2g", 5)


def test_operator_environment_is_accepted_by_the_real_operator_configuration(
    production_objects: list[Manifest],
) -> None:
    from tako_operator.settings import settings_from_env

    deployment = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    config = settings_from_env(env)
    assert config.max_concurrent == 50
    assert config.limits.max_attempts == 2
    assert config.limits.default_ttl_seconds == 86400
    assert (config.limits.retry_backoff_seconds, config.limits.retry_backoff_max_seconds) == (10, 600)
    assert config.pods.deadline_grace_seconds == 60  # the Pod's deadline and the operator's
    assert config.pods.runtime_class_name == "gvisor"
    assert config.default_image == production_values()["jobs"]["defaultJobType"]["image"]


def test_job_pods_use_the_runtime_class_the_chart_names() -> None:
    from tako_operator.settings import settings_from_env

    objects = render({"runtimeClass": {"create": True, "name": "gvisor-systrap", "handler": "runsc"}})
    deployment = one(objects, "Deployment", "tako-tako-vm-operator", NAMESPACE)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert settings_from_env(env).pods.runtime_class_name == "gvisor-systrap"
    assert one(objects, "RuntimeClass", "gvisor-systrap")["handler"] == "runsc"


def test_shim_arguments_parse_with_the_real_cli(production_objects: list[Manifest]) -> None:
    from tako_vm.cli import build_parser

    deployment = one(production_objects, "Deployment", "tako-shim", NAMESPACE)
    args = build_parser().parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (args.command, args.backend) == ("server", "kubernetes")


def test_operator_arguments_parse_with_the_real_cli(production_objects: list[Manifest]) -> None:
    from tako_vm.cli import build_parser

    deployment = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    try:
        args = build_parser().parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    except SystemExit as exit_:
        raise AssertionError("argparse rejected the chart's operator arguments") from exit_
    assert args.command == "operator"
    assert args.namespace is None and args.peering is None
    assert args.leader_election == "tako-operator"
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.metrics_port == 9090


def test_operator_arguments_reach_the_operator_entry_point(
    production_objects: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tako-vm operator <chart args>` starts the operator with leader election (HA), liveness and metrics."""
    import tako_operator.main
    from tako_vm import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(tako_operator.main, "run_operator", lambda **kwargs: calls.append(kwargs))
    deployment = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    assert cli.main(deployment["spec"]["template"]["spec"]["containers"][0]["args"]) == 0
    (kwargs,) = calls
    assert kwargs["namespaces"] is None and kwargs["all_namespaces"] is False
    assert (kwargs["peering"], kwargs["leader_election"]) == (None, "tako-operator")
    assert kwargs["liveness"] == "http://0.0.0.0:8080/healthz"
    assert kwargs["metrics_port"] == 9090


def test_a_default_job_type_per_job_namespace(production_objects: list[Manifest]) -> None:
    job_types = of_kind(production_objects, "PythonJobType")
    assert sorted(t["metadata"]["namespace"] for t in job_types) == [
        "tenant-alpha",
        "tenant-beta",
        "tenant-gamma",
    ]
    for job_type in job_types:
        assert job_type["metadata"]["name"] == "default"
        assert job_type["spec"]["image"].startswith("python:3.11.14-slim-bookworm@sha256:")
        assert job_type["spec"]["resources"] == {"memory": "1Gi", "cpu": "2"}
    assert of_kind(render({"jobs": {"defaultJobType": {"create": False}}}), "PythonJobType") == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"shim": {"config": {"defaultTimeout": 600, "maxTimeout": 300}}},
            "shim.config.defaultTimeout (600) must not exceed shim.config.maxTimeout (300)",
        ),
        (
            {"apiKeys": {"value": "k" * 20 + "=tako-jobs," + "j" * 20 + "=elsewhere"}},
            'apiKeys.value: tenant "elsewhere" is not one of jobs.namespaces [tako-jobs]',
        ),
        ({"networkPolicy": {"apiServerPorts": []}}, "at '/networkPolicy/apiServerPorts': minItems"),
    ],
)
def test_inconsistent_values_fail_rendering_with_a_message_naming_the_values(
    values: dict[str, Any], message: str
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as raised:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(raised.value)


def test_api_keys_for_known_tenants_render() -> None:
    value = "k" * 20 + "=tako-jobs," + "d" * 20
    secret = one(render({"apiKeys": {"value": value}}), "Secret", "tako-tako-vm-api-keys", NAMESPACE)
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == value


def test_helm_test_pod_checks_the_shim_health_through_its_service(
    default_objects: list[Manifest], production_objects: list[Manifest]
) -> None:
    test_pod = one(production_objects, "Pod", "tako-test-connection", NAMESPACE)
    shim_policy = one(production_objects, "NetworkPolicy", "tako-shim", NAMESPACE)
    allowed = [
        peer["podSelector"]["matchLabels"]
        for peer in shim_policy["spec"]["ingress"][0]["from"]
        if "podSelector" in peer
    ]
    assert any(labels.items() <= test_pod["metadata"]["labels"].items() for labels in allowed), (
        "the shim policy admits the test"
    )
    pod = one(default_objects, "Pod", "tako-tako-vm-test-connection", NAMESPACE)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert "http://tako-tako-vm-shim:8000/health" in container["command"][-1]
    assert pod["spec"]["automountServiceAccountToken"] is False


def exported_sample_names(registry: Any) -> set[str]:
    """Every sample name a scrape of ``registry`` can carry, read from the registry itself (a counter
    family ``x`` is scraped as ``x_total``, a histogram as ``x_bucket``/``x_count``/``x_sum``)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def test_grafana_dashboard_is_opt_in_and_queries_only_metrics_the_operator_and_shim_export() -> None:
    assert not [
        m for m in of_kind(render(), "ConfigMap") if m["metadata"]["name"].endswith("-grafana-dashboard")
    ]
    values = {"grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}}}
    (config_map,) = [
        m
        for m in of_kind(render(values), "ConfigMap")
        if m["metadata"]["name"].endswith("-grafana-dashboard")
    ]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["tako-vm.json"])
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])] + [
        variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"
    ]
    queried = {name for expr in expressions for name in re.findall(r"\btakovm_[a-z_]+", expr)}
    operator_names = exported_sample_names(Metrics().registry)
    shim_names = exported_sample_names(ShimMetrics().registry)
    assert queried and queried <= operator_names | shim_names, queried - (operator_names | shim_names)
    # every metric family of both components has a panel
    families = {f.name for f in Metrics().registry.collect()} | {
        f.name for f in ShimMetrics().registry.collect()
    }
    charted = {family for family in families if any(name.startswith(family) for name in queried)}
    assert charted == families, families - charted
    routes = set(re.findall(r'route!="([^"]+)"', " ".join(expressions)))
    assert routes == {"/jobs/{job_id}/events"}, "latency leaves out the SSE route, by its real template"


def test_shim_metrics_are_scraped_like_the_operators_and_can_be_turned_off(
    production_objects: list[Manifest],
) -> None:
    shim = one(render(), "Deployment", "tako-tako-vm-shim", NAMESPACE)
    annotations = shim["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8000", "/metrics")
    env = {e["name"]: e.get("value") for e in shim["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TAKO_VM_METRICS_ENABLED"] == "true" and env["TAKO_VM_CONSOLE_ENABLED"] == "false"
    off = one(
        render({"shim": {"metrics": {"enabled": False}, "console": {"enabled": True}}}),
        "Deployment",
        "tako-tako-vm-shim",
        NAMESPACE,
    )
    assert "prometheus.io/scrape" not in off["spec"]["template"]["metadata"]["annotations"]
    env = {e["name"]: e.get("value") for e in off["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TAKO_VM_METRICS_ENABLED"] == "false" and env["TAKO_VM_CONSOLE_ENABLED"] == "true"
    # production: API clients restricted, so the scrapers get their own rule to the shim's port
    policy = one(production_objects, "NetworkPolicy", "tako-shim", NAMESPACE)
    scrapers = production_values()["networkPolicy"]["metricsIngressFrom"]
    assert {"ports": [{"protocol": "TCP", "port": 8000}], "from": scrapers} in policy["spec"]["ingress"]


# --- sessions: the token key, the operator's session settings, who may reach a session Pod ------------


def _env(deployment: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_default_install_generates_a_session_key_only_the_shim_reads(default_objects: list[Manifest]) -> None:
    secret = one(default_objects, "Secret", "tako-tako-vm-session-key", NAMESPACE)
    key = base64.b64decode(secret["data"]["session-token-key"]).decode()
    assert len(key) == 64 and key.isalnum()
    assert (
        key
        != base64.b64decode(
            one(render(), "Secret", "tako-tako-vm-session-key", NAMESPACE)["data"]["session-token-key"]
        ).decode()
    ), "generated per install, never a constant of the chart"
    shim = _env(one(default_objects, "Deployment", "tako-tako-vm-shim", NAMESPACE))
    assert shim["TAKO_VM_SESSION_TOKEN_KEY"] == {
        "name": "TAKO_VM_SESSION_TOKEN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "tako-tako-vm-session-key", "key": "session-token-key"}},
    }
    operator = one(default_objects, "Deployment", "tako-tako-vm-operator", NAMESPACE)
    assert "tako-tako-vm-session-key" not in json.dumps(operator), "the operator never sees the key"
    given = render({"sessions": {"tokenKey": {"value": "v" * 40}}})
    stored = one(given, "Secret", "tako-tako-vm-session-key", NAMESPACE)["data"]["session-token-key"]
    assert base64.b64decode(stored).decode() == "v" * 40
    existing = render({"sessions": {"tokenKey": {"existingSecret": "mine", "secretKey": "k"}}})
    assert [s["metadata"]["name"] for s in of_kind(existing, "Secret")] == ["tako-tako-vm-api-keys"]
    ref = _env(one(existing, "Deployment", "tako-tako-vm-shim", NAMESPACE))["TAKO_VM_SESSION_TOKEN_KEY"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "k"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sessions": {"tokenKey": {"value": "short"}}}, "at '/sessions/tokenKey/value'"),
        ({"sessions": {"port": 80}}, "at '/sessions/port': minimum"),
        ({"sessions": {"maxMemoryLimit": "2Gi"}}, "at '/sessions/maxMemoryLimit'"),
        ({"sessions": {"retentionSeconds": -1}}, "at '/sessions/retentionSeconds'"),
    ],
)
def test_invalid_session_values_are_rejected_naming_the_field(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as raised:
            chart.validate_schema(values)
        assert message in str(raised.value)


def test_session_network_policy_admits_exactly_the_shim_pods_on_the_port_the_shim_may_reach(
    production_objects: list[Manifest],
) -> None:
    """The operator's session settings come from the chart; the NetworkPolicy it builds from them (the
    real builder) selects the shim's Pods (their template labels) in the release namespace and no other
    Pod of the chart, on the port the shim's own egress policy opens."""
    from tako_operator.core import sessions as core_sessions
    from tako_operator.settings import settings_from_env
    from tako_vm.models.crd import PythonSession

    operator = one(production_objects, "Deployment", "tako-operator", NAMESPACE)
    env = {k: e["value"] for k, e in _env(operator).items() if "value" in e}
    sessions = settings_from_env(env).sessions
    assert (sessions.port, sessions.client_namespace, sessions.retention_seconds) == (8791, NAMESPACE, 3600)
    session = PythonSession.model_validate(
        {
            "metadata": {"name": "s1", "namespace": "tenant-alpha", "uid": "u1"},
            "spec": {"tokenSha256": "0" * 64},
        }
    )
    (rule,) = core_sessions.build_session_policy(session, sessions)["spec"]["ingress"]
    (peer,) = rule["from"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8791}]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    selector = peer["podSelector"]["matchLabels"]
    for deployment in of_kind(production_objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        admitted = selector.items() <= labels.items()
        assert admitted is (deployment["metadata"]["name"] == "tako-shim"), deployment["metadata"]["name"]
    shim_policy = one(production_objects, "NetworkPolicy", "tako-shim", NAMESPACE)
    assert {"protocol": "TCP", "port": sessions.port} in shim_policy["spec"]["egress"][-1]["ports"]
    moved = render({**production_values(), "sessions": {**production_values()["sessions"], "port": 9000}})
    env = {k: e["value"] for k, e in _env(one(moved, "Deployment", "tako-operator", NAMESPACE)).items()
           if "value" in e}  # fmt: skip
    assert settings_from_env(env).sessions.port == 9000
    egress = one(moved, "NetworkPolicy", "tako-shim", NAMESPACE)["spec"]["egress"][-1]
    assert egress["ports"] == [{"protocol": "TCP", "port": 9000}]
