"""The Argo CD health check for PythonJob (gitops/argocd), run by a real Lua runtime (lupa).

The cases live next to the script in Argo CD's own test format (health_test.yaml + testdata/), and
every input object is checked against the PythonJob CRD schema, so the statuses are ones the
operator can actually write.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import lupa
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEALTH_DIR = ROOT / "gitops" / "argocd" / "health" / "takovm.dev" / "PythonJob"
SCRIPT = (HEALTH_DIR / "health.lua").read_text()
CASES = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]
ARGOCD_CM = ROOT / "gitops" / "argocd" / "argocd-cm.yaml"
CRD = ROOT / "crds" / "pythonjobs.takovm.dev.yaml"

# Argo CD's Lua VM has no io/os/package/debug; make sure the script needs none of them.
SANDBOXED_OUT = ("io", "os", "package", "debug", "require", "dofile", "loadfile", "load")


def run_health_check(obj: dict[str, Any], script: str = SCRIPT) -> dict[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    for name in SANDBOXED_OUT:
        lua.execute(f"{name} = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {key: result[key] for key in result}


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_phase_of_the_crd_has_a_case() -> None:
    phases = set(crd_schema()["properties"]["status"]["properties"]["phase"]["enum"])
    covered = {
        yaml.safe_load((HEALTH_DIR / case["inputPath"]).read_text()).get("status", {}).get("phase")
        for case in CASES
    }
    assert phases <= covered


@pytest.mark.parametrize("case", CASES, ids=[pathlib.Path(c["inputPath"]).stem for c in CASES])
def test_health_check_case(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((HEALTH_DIR / case["inputPath"]).read_text())
    jsonschema.validate(obj, crd_schema())  # a status the real API server would accept
    assert run_health_check(obj) == case["healthStatus"]


def test_unknown_phase_is_reported_not_guessed() -> None:
    obj = {"metadata": {"generation": 1}, "spec": {"code": "1"}, "status": {"phase": "Exploded"}}
    assert run_health_check(obj) == {"status": "Unknown", "message": "Unrecognised phase Exploded"}


def test_argocd_cm_embeds_exactly_this_script() -> None:
    config_map = yaml.safe_load(ARGOCD_CM.read_text())
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "argocd-cm"
    embedded = config_map["data"]["resource.customizations.health.takovm.dev_PythonJob"]
    assert embedded.strip() == SCRIPT.strip()
    # And the embedded copy is what Argo CD would run.
    succeeded = yaml.safe_load((HEALTH_DIR / "testdata" / "succeeded.yaml").read_text())
    assert run_health_check(succeeded, embedded)["status"] == "Healthy"
