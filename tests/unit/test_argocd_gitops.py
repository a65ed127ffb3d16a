"""GitOps artifacts (gitops/): job types and jobs managed from Git, Argo CD Applications, Flux objects.

- Each kustomization is built with the real `kubectl kustomize` (offline), and every PythonJobType /
  PythonJob it yields is checked against the CRD schema and the project's pydantic CRD models.
- Argo CD / Flux objects point at paths that exist, and the Helm values they carry pass the chart's
  values.schema.json (through Helm's own library).
- kstatus (what Flux's `wait: true` and `kubectl wait` build on) reads the conditions without custom
  expressions: its generic rules, applied to the operator's status shapes, give the expected results.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tako_vm.models.crd import PythonJob, PythonJobType

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
from status_readers import kstatus

ROOT = pathlib.Path(__file__).resolve().parents[2]
GITOPS = ROOT / "gitops"
CHART = ROOT / "charts" / "tako-vm"
HEALTH_TESTDATA = GITOPS / "argocd" / "health" / "takovm.dev" / "PythonJob" / "testdata"
KUSTOMIZATIONS = sorted(p.parent for p in GITOPS.rglob("kustomization.yaml"))


def load_all(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.takovm.dev.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_gitops_yaml_file_parses() -> None:
    files = [p for p in sorted(GITOPS.rglob("*.yaml")) if p.name != "health_test.yaml"]  # Argo's test format
    assert len(files) >= 10
    for path in files:
        for doc in load_all(path):
            assert "kind" in doc, path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl binary on PATH")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[p.name for p in KUSTOMIZATIONS])
def test_kustomization_builds_valid_takovm_objects(directory: pathlib.Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert objects
    for obj in objects:
        assert obj["metadata"]["namespace"] == "tako-jobs"
        if obj["kind"] == "PythonJobType":
            jsonschema.validate(obj, crd_schema("pythonjobtypes"))
            PythonJobType.model_validate(obj)
        elif obj["kind"] == "PythonJob":
            jsonschema.validate(obj, crd_schema("pythonjobs"))
            PythonJob.model_validate(obj)
        else:
            pytest.fail(f"unexpected {obj['kind']} in {directory}")


def test_job_types_from_git_cover_the_samples_job_type_names() -> None:
    names = {obj["metadata"]["name"] for obj in load_all_in(GITOPS / "job-types")}
    assert {"default", "data-science"} <= names
    default = next(obj for obj in load_all_in(GITOPS / "job-types") if obj["metadata"]["name"] == "default")
    assert "@sha256:" in default["spec"]["image"], "the default job image is pinned by digest"


def load_all_in(directory: pathlib.Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path)
    ]


def argo_applications() -> list[dict[str, Any]]:
    return [doc for path in sorted((GITOPS / "argocd").glob("application-*.yaml")) for doc in load_all(path)]


def flux_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in load_all(GITOPS / "flux" / "tako-vm.yaml") if doc["kind"] == kind]


def test_argo_cd_applications_point_at_existing_paths_with_valid_values() -> None:
    applications = argo_applications()
    assert {a["metadata"]["name"] for a in applications} == {"tako-vm", "tako-vm-job-types"}
    for application in applications:
        source = application["spec"]["source"]
        assert (ROOT / source["path"]).is_dir(), source["path"]
        if "helm" in source:
            with helm.Chart.load(ROOT / source["path"]) as chart:
                chart.validate_schema(source["helm"]["valuesObject"])


def test_flux_objects_point_at_existing_paths_with_valid_values() -> None:
    (release,) = flux_objects("HelmRelease")
    assert (ROOT / release["spec"]["chart"]["spec"]["chart"]).is_dir()
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(release["spec"]["values"])
    kustomizations = flux_objects("Kustomization")
    assert {k["spec"]["path"] for k in kustomizations} == {"./gitops/job-types", "./gitops/jobs"}
    for kustomization in kustomizations:
        assert (ROOT / kustomization["spec"]["path"]).is_dir()
        assert kustomization["spec"]["wait"] is True
        assert "healthCheckExprs" not in kustomization["spec"], "standard conditions need no custom CEL"


def test_gitops_and_chart_do_not_both_own_the_default_job_type() -> None:
    for application in argo_applications():
        values = application["spec"]["source"].get("helm", {}).get("valuesObject")
        if values:
            assert values["jobs"]["defaultJobType"]["create"] is False
    (release,) = flux_objects("HelmRelease")
    assert release["spec"]["values"]["jobs"]["defaultJobType"]["create"] is False


# --- kstatus -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-status", "Current"),  # the window before the operator's first pass (docs/gitops.md)
        ("queued", "InProgress"),
        ("pending", "InProgress"),
        ("running", "InProgress"),
        ("cancelling", "InProgress"),
        ("stale-generation", "InProgress"),
        ("succeeded", "Current"),
        ("cancelled-after-finish", "Current"),
        ("failed", "Failed"),
        ("timeout", "Failed"),
        ("oom", "Failed"),
        ("cancelled", "Failed"),
    ],
)
def test_kstatus_reads_the_standard_conditions(case: str, expected: str) -> None:
    """kstatus's generic rules on the Argo CD inputs (objects the real operator wrote, see
    tests/integration/test_operator_kstatus.py)."""
    obj = yaml.safe_load((HEALTH_TESTDATA / f"{case}.yaml").read_text())
    assert kstatus(obj) == expected


def test_the_gitops_test_inputs_carry_the_operators_own_conditions() -> None:
    """The kstatus and Argo CD cases are only meaningful if their conditions are what the operator writes."""
    from tako_operator.core.conditions import job_conditions

    checked = 0
    for path in sorted(HEALTH_TESTDATA.glob("*.yaml")):
        status = (yaml.safe_load(path.read_text()) or {}).get("status") or {}
        if "phase" not in status:
            continue
        wanted = job_conditions(status["phase"], status.get("message", ""))
        assert [(c["type"], c["status"]) for c in status["conditions"]] == [(k, v) for k, v, _, _ in wanted]
        checked += 1
    assert checked >= 10
