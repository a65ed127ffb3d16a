"""The CRDs' CEL rules (``x-kubernetes-validations``), evaluated by a real CEL implementation (cel-python,
with RE2 regexes like the API server's) the way the API server applies them: defaults first, each rule with
``self`` bound to the value at its node, transition rules (those using ``oldSelf``) only on updates where
the old value exists.

What only a real API server checks (the e2e tier): the CEL cost budget, and Kubernetes-specific CEL
library functions (none are used by these rules).
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import celpy
import pytest
from test_crd_schema import VALID_SAMPLES, apply_defaults, crd_schema

_ENV = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def _holds(rule: str, value: Any, old: Any) -> bool:
    activation = {"self": celpy.json_to_cel(value)}
    if "oldSelf" in rule:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        return bool(_program(rule).evaluate(activation))
    except celpy.CELEvalError:  # an evaluation error fails the rule, as on the API server
        return False


_MISSING = object()


def cel_violations(schema: dict[str, Any], new: Any, old: Any = _MISSING, path: str = "") -> list[str]:
    """Messages of every failing rule, prefixed with the field path (as the API server reports them)."""
    messages = []
    for validation in schema.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        if "oldSelf" in rule and old is _MISSING:
            continue  # transition rules apply to updates only
        if not _holds(rule, new, old):
            messages.append(f"{path or '<root>'}: {validation.get('message', rule)}")
    if isinstance(new, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in new:
                old_sub = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
                messages += cel_violations(sub, new[name], old_sub, f"{path}.{name}".lstrip("."))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in new.items():
                messages += cel_violations(extra, value, _MISSING, f"{path}[{key}]")
    if isinstance(new, list) and "items" in schema:
        for index, item in enumerate(new):
            messages += cel_violations(schema["items"], item, _MISSING, f"{path}[{index}]")
    return messages


def create(kind: str, spec: dict[str, Any]) -> list[str]:
    schema = crd_schema(kind)
    obj = apply_defaults(schema, {"spec": copy.deepcopy(spec)})
    return cel_violations(schema, obj)


def update(kind: str, old_spec: dict[str, Any], new_spec: dict[str, Any]) -> list[str]:
    schema = crd_schema(kind)
    old = apply_defaults(schema, {"spec": copy.deepcopy(old_spec)})
    new = apply_defaults(schema, {"spec": copy.deepcopy(new_spec)})
    return cel_violations(schema, new, old)


FULL_SPEC: dict[str, Any] = {
    "code": "print(1)",
    "inputData": {"a": [1, {"b": 2}]},
    "requirements": ["six==1.16.0"],
    "jobType": "data-science@v2",
    "timeoutSeconds": 30,
    "startupTimeoutSeconds": 60,
    "resources": {"memory": "256Mi", "cpu": "500m"},
    "ttlSecondsAfterFinished": 600,
    "idempotencyKey": "key-00000001",
    "parentJob": "parent",
    "relationship": "rerun",
    "podLabels": {"team": "a"},
    "webhook": {"url": "https://hooks.example/a"},
    "cancel": False,
}
CHANGED_VALUES: dict[str, Any] = {
    "code": "print(2)",
    "codeRef": {"name": "other"},
    "inputData": {"a": [1, {"b": 3}]},
    "requirements": ["six==1.17.0"],
    "jobType": "default",
    "timeoutSeconds": 31,
    "startupTimeoutSeconds": 61,
    "resources": {"memory": "512Mi", "cpu": "500m"},
    "ttlSecondsAfterFinished": 601,
    "idempotencyKey": "key-00000002",
    "parentJob": "other-parent",
    "relationship": "fork",
    "podLabels": {"team": "b"},
    "webhook": {"url": "https://hooks.example/b"},
}
SPEC_SCHEMA = crd_schema("PythonJob")["properties"]["spec"]


# --- create-time rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "obj"), VALID_SAMPLES, ids=[n for n, _ in VALID_SAMPLES])
def test_every_sample_passes_the_cel_rules(name: str, obj: dict[str, Any]) -> None:
    if obj["kind"] in ("PythonJob", "PythonJobType"):
        assert create(obj["kind"], obj["spec"]) == []


def test_full_spec_is_accepted() -> None:
    assert create("PythonJob", FULL_SPEC) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"code": "x", "codeRef": {"name": "cm"}},
            "spec: exactly one of spec.code or spec.codeRef must be set",
        ),
        ({"timeoutSeconds": 5}, "spec: exactly one of spec.code or spec.codeRef must be set"),
        ({"code": "  \n\t"}, "spec.code: spec.code must not be blank"),
        ({"code": "x", "parentJob": "p"}, "spec: spec.parentJob and spec.relationship must be set together"),
        (
            {"code": "x", "relationship": "fork"},
            "spec: spec.parentJob and spec.relationship must be set together",
        ),
        (
            {"code": "x", "podLabels": {"takovm.dev/job": "spoof"}},
            "spec.podLabels: spec.podLabels must not use the reserved prefix takovm.dev/",
        ),
    ],
)
def test_create_time_rules_reject_with_a_message_naming_the_field(spec: dict[str, Any], message: str) -> None:
    assert message in create("PythonJob", spec)


def test_label_keys_with_a_dns_prefix_are_accepted() -> None:
    assert create("PythonJob", {"code": "x", "podLabels": {"example.com/team": "a", "app": "b"}}) == []


@pytest.mark.parametrize("name", ["TAKO_TIMEOUT", "PYTHONPATH"])
def test_job_type_env_names_reserved_for_the_runner(name: str) -> None:
    spec = {"image": "python:3.11-slim", "env": [{"name": name, "value": "1"}]}
    assert create("PythonJobType", spec) == [
        "spec.env[0].name: env names starting with TAKO_ and PYTHONPATH are reserved"
    ]


# --- immutability ---------------------------------------------------------------------------------------


def test_an_unchanged_update_is_allowed() -> None:
    assert update("PythonJob", FULL_SPEC, FULL_SPEC) == []


@pytest.mark.parametrize("field", sorted(set(SPEC_SCHEMA["properties"]) - {"cancel", "codeRef"}))
def test_every_spec_field_but_cancel_is_immutable(field: str) -> None:
    changed = {**FULL_SPEC, field: CHANGED_VALUES[field]}
    assert f"spec.{field}: spec.{field} is immutable" in update("PythonJob", FULL_SPEC, changed)


def test_code_ref_is_immutable() -> None:
    old = {"codeRef": {"name": "a", "key": "main.py"}}
    assert "spec.codeRef: spec.codeRef is immutable" in update("PythonJob", old, {"codeRef": {"name": "b"}})


PRESENCE = "spec: spec fields other than cancel cannot be added or removed after creation"


@pytest.mark.parametrize("field", sorted(set(CHANGED_VALUES) - {"code", "codeRef", "jobType"}))
def test_optional_fields_cannot_be_added_or_removed(field: str) -> None:
    minimal = {"code": "print(1)"}
    if field in ("parentJob", "relationship"):  # these come as a pair
        minimal_with = {**minimal, "parentJob": "p", "relationship": "rerun"}
    else:
        minimal_with = {**minimal, field: CHANGED_VALUES[field]}
    assert PRESENCE in update("PythonJob", minimal, minimal_with)
    assert PRESENCE in update("PythonJob", minimal_with, minimal)


def test_switching_code_for_code_ref_is_rejected() -> None:
    assert PRESENCE in update("PythonJob", {"code": "x"}, {"codeRef": {"name": "cm"}})


def test_cancel_can_be_set_but_never_unset() -> None:
    assert update("PythonJob", FULL_SPEC, {**FULL_SPEC, "cancel": True}) == []
    assert update("PythonJob", {"code": "x"}, {"code": "x", "cancel": True}) == []
    assert update("PythonJob", {**FULL_SPEC, "cancel": True}, FULL_SPEC) == [
        "spec.cancel: spec.cancel cannot be set back to false"
    ]


def test_the_presence_rule_names_every_optional_field() -> None:
    """A new optional spec field must join the add/remove rule (else it could be added after creation)."""
    (rule,) = [v["rule"] for v in SPEC_SCHEMA["x-kubernetes-validations"] if "oldSelf" in v["rule"]]
    named = set(re.findall(r"has\(self\.(\w+)\)", rule))
    defaulted = {name for name, sub in SPEC_SCHEMA["properties"].items() if "default" in sub}
    assert named == set(SPEC_SCHEMA["properties"]) - defaulted
    for name in named:
        assert f"has(self.{name}) == has(oldSelf.{name})" in " ".join(rule.split())


def test_the_evaluator_is_not_vacuous() -> None:
    """The helper really evaluates rules: a rule that is false reports its message."""
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "self.a > 1", "message": "a too small"}],
    }
    assert cel_violations(schema, {"a": 1}) == ["<root>: a too small"]
    assert cel_violations(schema, {"a": 2}) == []
