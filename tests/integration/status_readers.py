"""What platform tools make of a PythonJob, computed by their documented rules (shared by the unit
tests on gitops/ test data and the integration tests on objects the real operator wrote):

- `kstatus`: sigs.k8s.io/cli-utils/pkg/kstatus `Compute` for a custom resource (status/core.go and
  status/generic.go): deletionTimestamp -> Terminating; status.observedGeneration != generation ->
  InProgress; the first Reconciling=True -> InProgress or Stalled=True -> Failed; else the `Ready`
  condition (True -> Current, False/Unknown -> InProgress); else Current. Flux's `wait: true` uses it.
- `kubectl_wait_met`: `kubectl wait --for=condition=TYPE[=STATUS]`: a condition of that type with that
  status (case-insensitive) whose observedGeneration (the condition's, else status.observedGeneration)
  is the object's generation.
- `argo_health`: the Argo CD health check (gitops/argocd/.../health.lua) run by a real Lua runtime
  (lupa) with io/os/package/debug removed, as in Argo CD's sandbox.
"""

from __future__ import annotations

import pathlib
from typing import Any

import lupa

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEALTH_DIR = ROOT / "gitops" / "argocd" / "health" / "takovm.dev" / "PythonJob"
SANDBOXED_OUT = ("io", "os", "package", "debug", "require", "dofile", "loadfile", "load")


def kstatus(obj: dict[str, Any]) -> str:
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if (
        generation is not None
        and "observedGeneration" in status
        and status["observedGeneration"] != generation
    ):
        return "InProgress"
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress"
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed"
    for condition in conditions:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return "Current"
            if condition.get("status") in ("False", "Unknown"):
                return "InProgress"
    return "Current"


def kubectl_wait_met(obj: dict[str, Any], condition_type: str, wanted: str = "True") -> bool:
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    for condition in status.get("conditions") or []:
        if condition.get("type") != condition_type or str(condition.get("status")).lower() != wanted.lower():
            continue
        observed = condition.get("observedGeneration", status.get("observedGeneration"))
        return observed is None or generation is None or observed == generation
    return False


def argo_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    for name in SANDBOXED_OUT:
        lua.execute(f"{name} = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script if script is not None else (HEALTH_DIR / "health.lua").read_text())
    return {key: result[key] for key in result}
