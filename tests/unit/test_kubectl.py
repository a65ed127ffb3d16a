"""`kubectl` client-side dry runs of every sample and of the rendered chart.

What works here without a cluster (kubectl is the google-cloud-sdk build, client only):
- `kubectl create --dry-run=client` needs only API discovery to map kinds to resources. kubectl
  reads discovery from its disk cache (`--cache-dir`) when the cache is fresh, so the tests write
  that cache (built-in kinds below plus the chart's CRDs) and point kubectl at an unreachable
  server: nothing is contacted, and an unknown kind or a malformed manifest still fails.
- `kubectl apply --dry-run=client` must also GET the live object to compute its patch, so it
  always needs a server. Those tests run the real kubectl against kmock (an emulated API server
  that serves discovery and answers 404 for objects that do not exist yet).
Schema validation of the same objects is done offline by kubernetes-validate (test_chart.py) and
by the CRD schema tests; `--validate` would need the server's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tako-vm"
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl binary on PATH")

# Built-in resources the chart and the samples use: (groupVersion, plural, kind, namespaced).
BUILTIN_RESOURCES = [
    ("v1", "namespaces", "Namespace", False),
    ("v1", "serviceaccounts", "ServiceAccount", True),
    ("v1", "secrets", "Secret", True),
    ("v1", "services", "Service", True),
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "pods", "Pod", True),
    ("apps/v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("node.k8s.io/v1", "runtimeclasses", "RuntimeClass", False),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False),
]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def load_all(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def chart_crds() -> list[dict[str, Any]]:
    return [doc for path in sorted((CHART / "crds").glob("*.yaml")) for doc in load_all(path)]


def all_resources() -> list[tuple[str, str, str, bool]]:
    """The built-in resources plus every kind the chart's CRDs define (discovery of a real cluster)."""
    resources = list(BUILTIN_RESOURCES)
    for crd in chart_crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            resources.append(
                (
                    f"{spec['group']}/{version['name']}",
                    spec["names"]["plural"],
                    spec["names"]["kind"],
                    spec["scope"] == "Namespaced",
                )
            )
    return resources


def rendered_chart(tmp: pathlib.Path) -> pathlib.Path:
    """`helm template` output (templates, no CRDs: those are applied from crds/) as one file."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(name="tako", namespace="tako-system", is_install=True)
    docs = [text for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")]
    out = tmp / "chart.yaml"
    out.write_text("\n---\n".join(docs))
    return out


# --- offline: discovery from kubectl's disk cache, no server ---------------------------------------


def write_discovery_cache(cache_dir: pathlib.Path, host_dir: str) -> None:
    """Write the files kubectl's cached discovery client reads (servergroups + per-version resources)."""
    base = cache_dir / "discovery" / host_dir
    by_group: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for group_version, plural, kind, namespaced in all_resources():
        group, _, version = group_version.rpartition("/")
        by_group.setdefault(group, {}).setdefault(version, []).append(
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": VERBS,
            }
        )
    groups = []
    for group, versions in by_group.items():
        entries = [{"groupVersion": f"{group}/{v}" if group else v, "version": v} for v in versions]
        groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
        for version, resources in versions.items():
            group_version = f"{group}/{version}" if group else version
            target = base / group_version / "serverresources.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(
                json.dumps(
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": group_version,
                        "resources": resources,
                    }
                )
            )
    base.mkdir(parents=True, exist_ok=True)
    (base / "servergroups.json").write_text(
        json.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    )


def write_kubeconfig(path: pathlib.Path, server: str) -> pathlib.Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "tako-jobs"}}
                ],
                "current-context": "c",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def offline_kubectl(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """kubectl aimed at a port nothing listens on, with discovery served from its cache."""
    tmp = tmp_path_factory.mktemp("kubectl-offline")
    write_discovery_cache(tmp / "cache", "127.0.0.1_1")
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", "http://127.0.0.1:1")
    assert KUBECTL is not None
    return [KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp / 'cache'}", "--request-timeout=5s"]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def create_dry_run(kubectl: list[str], path: pathlib.Path) -> list[dict[str, Any]]:
    result = run([*kubectl, "create", "--dry-run=client", "--validate=false", "-o", "yaml", "-f", str(path)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_passes_kubectl_create_dry_run_offline(
    offline_kubectl: list[str], sample: pathlib.Path
) -> None:
    printed = create_dry_run(offline_kubectl, sample)
    expected = load_all(sample)
    assert [(o["kind"], o["metadata"]["name"]) for o in printed] == [
        (o["kind"], o["metadata"]["name"]) for o in expected
    ]
    assert [o.get("spec") for o in printed] == [o.get("spec") for o in expected]


def test_the_rendered_chart_passes_kubectl_create_dry_run_offline(
    offline_kubectl: list[str], tmp_path: pathlib.Path
) -> None:
    manifest = rendered_chart(tmp_path)
    printed = create_dry_run(offline_kubectl, manifest)
    expected = load_all(manifest)
    assert len(printed) == len(expected) > 10
    assert {(o["kind"], o["metadata"]["name"]) for o in printed} == {
        (o["kind"], o["metadata"]["name"]) for o in expected
    }


def test_the_chart_crds_pass_kubectl_create_dry_run_offline(offline_kubectl: list[str]) -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        printed = create_dry_run(offline_kubectl, path)
        assert {o["metadata"]["name"] for o in printed} == {o["metadata"]["name"] for o in load_all(path)}


def test_offline_dry_run_still_rejects_an_unknown_kind(
    offline_kubectl: list[str], tmp_path: pathlib.Path
) -> None:
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text("apiVersion: takovm.dev/v1alpha1\nkind: PythonJbo\nmetadata: {name: x}\nspec: {}\n")
    result = run([*offline_kubectl, "create", "--dry-run=client", "--validate=false", "-f", str(bogus)])
    # An unknown kind is a cache miss: kubectl refreshes discovery, cannot reach a server, and fails.
    assert result.returncode != 0
    assert "unable to recognize" in result.stderr


def test_offline_apply_dry_run_needs_a_server(offline_kubectl: list[str]) -> None:
    """Documents the limit: apply reads the live object even with --dry-run=client."""
    sample = next(p for p in SAMPLES if p.stem == "hello")
    result = run([*offline_kubectl, "apply", "--dry-run=client", "--validate=false", "-f", str(sample)])
    assert result.returncode != 0
    assert "error when retrieving current configuration" in result.stderr


# --- kubectl apply --dry-run=client against an emulated API server (kmock) ---------------------------


@pytest.fixture(scope="module")
def kmock_kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """kubectl aimed at kmock, which serves discovery for the same resources and 404 for new objects.

    This is a mock of the API server (no real one can run here, see docs/e2e.md); the kind tier
    (tests/e2e) runs the same applies against a real cluster.
    """
    import kmock

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock-kubectl", daemon=True)
    thread.start()

    async def start() -> tuple[Any, Any, str]:
        emulator = kmock.KubernetesEmulator()
        for group_version, plural, kind, namespaced in all_resources():
            emulator.resources[f"{group_version}/{plural}"] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS
            )
        # kmock 0.8 labels its core discovery document groupVersion "/v1", which kubectl cannot
        # parse; serve the document a real API server returns instead.
        core = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": VERBS,
            }
            for group_version, plural, kind, namespaced in all_resources()
            if group_version == "v1"
        ]
        emulator[kmock.path("/api/v1")] << {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": core,
        }
        server = kmock.Server(emulator)
        await emulator.__aenter__()
        await server.__aenter__()
        return emulator, server, str(server.url).rstrip("/")

    emulator, server, url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    tmp = tmp_path_factory.mktemp("kubectl-kmock")
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", url)
    assert KUBECTL is not None
    try:
        yield [KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp / 'cache'}", "--request-timeout=10s"]
    finally:

        async def stop() -> None:
            await server.__aexit__(None, None, None)
            await emulator.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def apply_dry_run(kubectl: list[str], path: pathlib.Path) -> list[str]:
    result = run([*kubectl, "apply", "--dry-run=client", "--validate=false", "-o", "name", "-f", str(path)])
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_passes_kubectl_apply_dry_run(kmock_kubectl: list[str], sample: pathlib.Path) -> None:
    names = apply_dry_run(kmock_kubectl, sample)
    expected = [
        f"{o['kind'].lower()}.{o['apiVersion'].partition('/')[0]}/{o['metadata']['name']}"
        for o in load_all(sample)
    ]
    assert [n.replace(".v1/", "/") for n in names] == [e.replace(".v1/", "/") for e in expected]


def test_the_rendered_chart_passes_kubectl_apply_dry_run(
    kmock_kubectl: list[str], tmp_path: pathlib.Path
) -> None:
    manifest = rendered_chart(tmp_path)
    names = apply_dry_run(kmock_kubectl, manifest)
    assert len(names) == len(load_all(manifest))
    assert "deployment.apps/tako-tako-vm-operator" in names
    assert "deployment.apps/tako-tako-vm-shim" in names
