"""The chart's completion-webhook wiring, rendered with Helm's own library: the operator may `get`
exactly the named Secret (nothing when none is named), and both components get the same allowlist."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from chart_support import operator_container, render  # noqa: E402


def secret_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o.get("rules") or []
        if "secrets" in rule.get("resources", [])
    ]


def env_of(objects: list[dict[str, Any]], name_part: str) -> dict[str, str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and name_part in o["metadata"]["name"]]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_operator_gets_exactly_the_named_secret() -> None:
    values = {"webhooks": {"secretName": "hooks", "allowlist": ["10.1.0.0/16", "127.0.0.1/32"]}}
    objects = render(values, "tako-system")
    (rule,) = secret_rules(objects)
    assert rule == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hooks"], "verbs": ["get"]}
    (role,) = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-webhook-secret")
    ]
    assert role["metadata"]["namespace"] == "tako-system"
    _, env, _ = operator_container(objects)
    assert env["TAKO_OPERATOR_WEBHOOK_SECRET_NAME"] == "hooks"
    assert env["TAKO_OPERATOR_WEBHOOK_SECRET_NAMESPACE"] == "tako-system"
    assert env["TAKO_OPERATOR_WEBHOOK_ALLOWLIST"] == "10.1.0.0/16,127.0.0.1/32"
    assert env_of(objects, "shim")["TAKO_VM_WEBHOOK_ALLOWLIST"] == "10.1.0.0/16,127.0.0.1/32"


def test_no_secret_named_means_no_secret_access() -> None:
    objects = render({}, "tako-system")
    assert secret_rules(objects) == []
    _, env, _ = operator_container(objects)
    assert env["TAKO_OPERATOR_WEBHOOK_SECRET_NAME"] == ""
