"""The CRDs are valid, their samples validate, bad samples are rejected naming the field, and the CRD
schemas and the pydantic models in ``tako_vm.models.crd`` agree field by field.

No API server runs here, so the structural schema is checked with ``jsonschema`` after a conversion that
follows what the API server does (unknown fields rejected unless ``x-kubernetes-preserve-unknown-fields``,
as under ``kubectl``'s default strict field validation). CEL rules are checked by ``test_crd_cel.py``.
"""

from __future__ import annotations

import copy
import functools
import pathlib
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from tako_vm.models import crd as models

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
SAMPLES = CRD_DIR / "samples"
K8S_VERSION = "1.32"

CRD_FILES = {
    "PythonJob": CRD_DIR / "pythonjobs.takovm.dev.yaml",
    "PythonJobType": CRD_DIR / "pythonjobtypes.takovm.dev.yaml",
    "PythonSession": CRD_DIR / "pythonsessions.takovm.dev.yaml",
}
SPEC_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "PythonJob": models.PythonJobSpec,
    "PythonJobType": models.PythonJobTypeSpec,
    "PythonSession": models.PythonSessionSpec,
}
OBJECT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "PythonJob": models.PythonJob,
    "PythonJobType": models.PythonJobType,
    "PythonSession": models.PythonSession,
}


def load_yaml(path: pathlib.Path) -> Any:
    return yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # libyaml: the samples include 100 kB of code


@functools.cache
def load_crd(kind: str) -> dict[str, Any]:
    """The parsed CRD (cached and shared: copy before changing it)."""
    doc: dict[str, Any] = load_yaml(CRD_FILES[kind])
    return doc


def crd_schema(kind: str) -> dict[str, Any]:
    (version,) = load_crd(kind)["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Convert a structural openAPIV3Schema node to plain JSON Schema with the API server's semantics."""
    out: dict[str, Any] = {
        k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if "properties" in node:
        out["properties"] = {name: to_jsonschema(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_jsonschema(node["items"])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in node:
            out[key] = [to_jsonschema(sub) for sub in node[key]]
    return out


def schema_errors(kind: str, obj: dict[str, Any]) -> list[str]:
    """Every structural-schema violation, as '<dotted.path>: <message>' (like the API server's)."""
    validator = jsonschema.Draft202012Validator(to_jsonschema(crd_schema(kind)))
    messages = []
    for error in validator.iter_errors(obj):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.context:  # a oneOf: say which alternatives failed and why
            reasons = "; ".join(sorted({sub.message for sub in error.context}))
            messages.append(f"{path}: must validate one and only one of {error.validator}: {reasons}")
        elif len(error.message) > 200:  # e.g. "'<100,000 characters>' is too long"
            messages.append(f"{path}: violates {error.validator}={error.validator_value!r}")
        else:
            messages.append(f"{path}: {error.message}")
    return messages


def model_errors(kind: str, obj: dict[str, Any]) -> list[str]:
    try:
        OBJECT_MODELS[kind].model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return []


def load_samples(folder: pathlib.Path) -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, load_yaml(path)) for path in sorted(folder.glob("*.yaml"))]


VALID_SAMPLES = load_samples(SAMPLES)
INVALID_SAMPLES = dict(load_samples(SAMPLES / "invalid"))


# --- the CRDs themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_is_a_valid_apiextensions_v1_crd(kind: str) -> None:
    crd = load_crd(kind)
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["spec"]["group"] == "takovm.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.takovm.dev"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def _structural_violations(node: dict[str, Any], path: str, in_combinator: bool = False) -> list[str]:
    """The API server's structural rules: every node specifies a type (unless it preserves unknown
    fields or is int-or-string); oneOf/anyOf/allOf branches carry only value validations."""
    problems = []
    if in_combinator:
        for forbidden in ("type", "description", "default", "additionalProperties", "nullable"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden} inside a combinator")
    elif "type" not in node and not (
        node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    ):
        problems.append(f"{path}: no type")
    for name, sub in node.get("properties", {}).items():
        problems += _structural_violations(sub, f"{path}.{name}", in_combinator)
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_violations(node["additionalProperties"], f"{path}[*]", in_combinator)
    if "items" in node:
        problems += _structural_violations(node["items"], f"{path}[]", in_combinator)
    for key in ("oneOf", "anyOf", "allOf"):
        for index, sub in enumerate(node.get(key, [])):
            problems += _structural_violations(sub, f"{path}.{key}[{index}]", True)
    return problems


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_schema_is_structural(kind: str) -> None:
    assert _structural_violations(crd_schema(kind), "openAPIV3Schema") == []


def assert_columns_point_at_schema_fields(version: dict[str, Any], schema: dict[str, Any]) -> None:
    """Every printer column outside metadata names a field of ``schema`` of the column's type (a ``date``
    column is a string field)."""
    for column in version["additionalPrinterColumns"]:
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            node = node["properties"][part]
        expected = "string" if column["type"] == "date" else column["type"]
        assert node["type"] == expected, column


def test_pythonjob_names_columns_and_status_subresource() -> None:
    crd = load_crd("PythonJob")
    assert crd["spec"]["names"]["shortNames"] == ["pyjob", "pyjobs"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    default_columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_columns == ["Phase", "Type", "Exit", "Duration", "Age"]
    assert_columns_point_at_schema_fields(version, crd_schema("PythonJob"))


def test_pythonsession_names_columns_and_status_subresource() -> None:
    crd = load_crd("PythonSession")
    assert crd["spec"]["names"]["shortNames"][0] == "pysession"
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    default_columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_columns == ["Phase", "Age", "Expires"]
    schema = crd_schema("PythonSession")
    assert_columns_point_at_schema_fields(version, schema)
    end_reason = schema["properties"]["status"]["properties"]["endReason"]
    from tako_vm.models.sessions import END_REASONS

    assert all(re.fullmatch(end_reason["pattern"], reason) for reason in END_REASONS)


def test_pythonjobtype_short_name() -> None:
    assert load_crd("PythonJobType")["spec"]["names"]["shortNames"][0] == "pyjobtype"


@pytest.mark.parametrize("kind", ["PythonJob", "PythonSession"])
def test_status_is_kstatus_compatible(kind: str) -> None:
    status = crd_schema(kind)["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    condition = conditions["items"]
    assert set(condition["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert "observedGeneration" in condition["properties"]


# --- samples ----------------------------------------------------------------------------------------


def test_every_scenario_has_a_sample() -> None:
    names = {name for name, _ in VALID_SAMPLES}
    for scenario in (
        "hello", "with-input", "with-requirements", "failing", "timeout", "oom", "cancel", "large-code",
        "jobtype-default", "jobtype-data-science",
    ):  # fmt: skip
        assert f"{scenario}.yaml" in names
    assert set(INVALID_SAMPLES) == {
        "missing-code.yaml", "timeout-zero.yaml", "unknown-field.yaml", "oversize-code.yaml",
        "51-requirements.yaml",
    }  # fmt: skip


@pytest.mark.parametrize(("name", "obj"), VALID_SAMPLES, ids=[n for n, _ in VALID_SAMPLES])
def test_sample_validates_against_crd_schema_and_models(name: str, obj: dict[str, Any]) -> None:
    if obj["kind"] == "ConfigMap":
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    assert schema_errors(obj["kind"], obj) == []
    assert model_errors(obj["kind"], obj) == []


def test_large_code_sample_references_its_configmap() -> None:
    samples = dict(VALID_SAMPLES)
    ref = samples["large-code.yaml"]["spec"]["codeRef"]
    configmap = samples["large-code-configmap.yaml"]
    assert configmap["metadata"]["name"] == ref["name"]
    assert ref["key"] in configmap["data"]


@pytest.mark.parametrize(
    ("sample", "field"),
    [
        ("missing-code.yaml", "code"),
        ("timeout-zero.yaml", "timeoutSeconds"),
        ("unknown-field.yaml", "image"),
        ("oversize-code.yaml", "code"),
        ("51-requirements.yaml", "requirements"),
    ],
)
def test_invalid_sample_is_rejected_naming_the_field(sample: str, field: str) -> None:
    obj = INVALID_SAMPLES[sample]
    by_schema = schema_errors("PythonJob", obj)
    by_model = model_errors("PythonJob", obj)
    assert by_schema, f"{sample} passed the CRD schema"
    assert by_model, f"{sample} passed the pydantic model"
    assert any(field in message for message in by_schema), by_schema
    assert any(field in message for message in by_model), by_model


def test_invalid_samples_differ_from_a_valid_job_only_in_their_one_fault() -> None:
    """Each invalid sample becomes valid when its single fault is removed, so it tests that fault only."""
    fixes = {
        "missing-code.yaml": lambda spec: spec.update(code="print(1)"),
        "timeout-zero.yaml": lambda spec: spec.update(timeoutSeconds=1),
        "unknown-field.yaml": lambda spec: spec.pop("image"),
        "oversize-code.yaml": lambda spec: spec.update(code=spec["code"][: models.CODE_MAX_CHARS]),
        "51-requirements.yaml": lambda spec: spec["requirements"].pop(),
    }
    for sample, fix in fixes.items():
        obj = copy.deepcopy(INVALID_SAMPLES[sample])
        fix(obj["spec"])
        assert schema_errors("PythonJob", obj) == [], sample
        assert model_errors("PythonJob", obj) == [], sample


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"code": "print(1)", "codeRef": {"name": "cm"}}, "code"),
        ({"code": "print(1)", "requirements": ["ok", "bad; rm -rf /"]}, "requirements"),
        ({"code": "print(1)", "jobType": "Data_Science"}, "jobType"),
        ({"code": "print(1)", "startupTimeoutSeconds": 5}, "startupTimeoutSeconds"),
        ({"code": "print(1)", "resources": {"memory": "lots"}}, "memory"),
        ({"code": "print(1)", "resources": {"cpu": "1.2345"}}, "cpu"),
        ({"code": "print(1)", "relationship": "clone", "parentJob": "a"}, "relationship"),
        ({"code": "print(1)", "idempotencyKey": "short"}, "idempotencyKey"),
        ({"code": "print(1)", "podLabels": {"team": "bad value!"}}, "podLabels"),
    ],
)
def test_more_bad_specs_are_rejected_by_schema_and_model(spec: dict[str, Any], field: str) -> None:
    obj = {"apiVersion": models.API_VERSION, "kind": "PythonJob", "metadata": {"name": "x"}, "spec": spec}
    by_schema, by_model = schema_errors("PythonJob", obj), model_errors("PythonJob", obj)
    assert any(field in message for message in by_schema), by_schema
    assert any(field in message for message in by_model), by_model


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"code": "   \n"}, "blank"),
        ({"code": "x", "podLabels": {"takovm.dev/job": "spoof"}}, "reserved prefix"),
        ({"code": "x", "podLabels": {"bad key!": "v"}}, "not a valid label key"),
        ({"code": "x", "parentJob": "a"}, "together"),
        ({"code": "x", "inputData": {"blob": "x" * models.INPUT_MAX_SERIALIZED_BYTES}}, "inputData"),
    ],
)
def test_model_repeats_rules_the_crd_states_in_cel(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=words):
        models.PythonJobSpec.model_validate(spec)


def test_job_type_env_rejects_reserved_and_duplicate_names() -> None:
    base = {"image": "python:3.11-slim"}
    with pytest.raises(pydantic.ValidationError, match="reserved"):
        models.PythonJobTypeSpec.model_validate({**base, "env": [{"name": "TAKO_X", "value": "1"}]})
    with pytest.raises(pydantic.ValidationError, match="repeated: A"):
        models.PythonJobTypeSpec.model_validate(
            {**base, "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}
        )


# --- the CRD schema and the models agree ------------------------------------------------------------

COMPARED_KEYWORDS = (
    "type", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "maxProperties",
    "pattern", "enum", "format",
)  # fmt: skip


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline $refs and drop pydantic's `X | None` null branch, keeping the outer default."""
    if "$ref" in node:
        node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            outer = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**_resolve(branches[0], defs), **outer}
    if "enum" in node and "type" not in node:
        node = {**node, "type": "string"}
    return node


def compare_schemas(crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    """Differences between a CRD schema node and the model's JSON schema node, recursively."""
    model = _resolve(model, defs)
    diffs = []
    for keyword in COMPARED_KEYWORDS:
        if crd.get(keyword) != model.get(keyword):
            diffs.append(f"{path}: {keyword} CRD={crd.get(keyword)!r} model={model.get(keyword)!r}")
    if "default" in crd and "default" in model and crd["default"] != model["default"]:
        diffs.append(f"{path}: default CRD={crd['default']!r} model={model['default']!r}")
    if crd.get("type") == "object":
        crd_props, model_props = crd.get("properties", {}), model.get("properties", {})
        if set(crd_props) != set(model_props):
            diffs.append(f"{path}: fields only in CRD {sorted(set(crd_props) - set(model_props))}, "
                         f"only in model {sorted(set(model_props) - set(crd_props))}")  # fmt: skip
        if set(crd.get("required", [])) != set(model.get("required", [])):
            diffs.append(f"{path}: required CRD={crd.get('required')} model={model.get('required')}")
        for name in sorted(set(crd_props) & set(model_props)):
            diffs += compare_schemas(crd_props[name], model_props[name], defs, f"{path}.{name}")
        crd_extra, model_extra = crd.get("additionalProperties"), model.get("additionalProperties")
        if isinstance(crd_extra, dict):
            assert isinstance(model_extra, dict), f"{path}: CRD has a map, the model does not"
            diffs += compare_schemas(crd_extra, model_extra, defs, f"{path}[*]")
        preserves = bool(crd.get("x-kubernetes-preserve-unknown-fields"))
        if preserves != (model_extra is True):
            diffs.append(
                f"{path}: preserve-unknown-fields={preserves} but model additionalProperties={model_extra}"
            )
    if crd.get("type") == "array":
        diffs += compare_schemas(crd["items"], model["items"], defs, f"{path}[]")
    return diffs


@pytest.mark.parametrize(
    ("kind", "part", "model"),
    [
        ("PythonJob", "spec", models.PythonJobSpec),
        ("PythonJob", "status", models.PythonJobStatus),
        ("PythonJobType", "spec", models.PythonJobTypeSpec),
        ("PythonSession", "spec", models.PythonSessionSpec),
        ("PythonSession", "status", models.PythonSessionStatus),
    ],
)
def test_crd_schema_and_model_agree_field_by_field(
    kind: str, part: str, model: type[pydantic.BaseModel]
) -> None:
    model_schema = model.model_json_schema(by_alias=True)
    crd_part = crd_schema(kind)["properties"][part]
    model_required = set(model_schema.get("required", []))
    crd_required = set(crd_part.get("required", []))
    assert compare_schemas({**crd_part, "required": sorted(crd_required)}, model_schema,
                           model_schema.get("$defs", {}), part) == []  # fmt: skip
    assert crd_required == model_required


def test_comparison_catches_a_changed_bound() -> None:
    """The agreement test above can fail: a one-off bound change is reported with its path."""
    model_schema = models.PythonJobSpec.model_json_schema(by_alias=True)
    crd_spec = copy.deepcopy(crd_schema("PythonJob")["properties"]["spec"])
    crd_spec["properties"]["requirements"]["maxItems"] = 51
    crd_spec["properties"]["codeRef"]["properties"]["extra"] = {"type": "string"}
    diffs = compare_schemas(crd_spec, model_schema, model_schema["$defs"], "spec")
    assert "spec.requirements: maxItems CRD=51 model=50" in diffs
    assert any("spec.codeRef: fields only in CRD ['extra']" in d for d in diffs)


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting as the API server does it: fill missing fields that declare a default."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    if isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


@pytest.mark.parametrize(
    ("kind", "minimal"),
    [
        ("PythonJob", {"code": "print(1)"}),
        ("PythonJob", {"codeRef": {"name": "cm"}}),
        ("PythonJobType", {"image": "python:3.11-slim"}),
        ("PythonSession", {}),
    ],
)
def test_crd_defaults_equal_model_defaults(kind: str, minimal: dict[str, Any]) -> None:
    defaulted_by_server = apply_defaults(crd_schema(kind)["properties"]["spec"], copy.deepcopy(minimal))
    defaulted_by_model = SPEC_MODELS[kind].model_validate(minimal).model_dump(exclude_none=True)
    assert defaulted_by_server == defaulted_by_model


def test_builtin_default_job_type_matches_its_sample() -> None:
    sample = dict(VALID_SAMPLES)["jobtype-default.yaml"]
    spec = models.PythonJobTypeSpec.model_validate(sample["spec"])
    assert spec.model_dump(exclude={"description"}) == models.DEFAULT_JOB_TYPE.model_dump(
        exclude={"description"}
    )


def test_spec_round_trips_in_camel_case() -> None:
    spec = models.PythonJobSpec(code="print(1)", timeout_seconds=5, input_data={"a": 1})
    dumped = spec.model_dump(exclude_none=True)
    assert dumped == {"code": "print(1)", "timeoutSeconds": 5, "inputData": {"a": 1}, "jobType": "default",
                      "cancel": False}  # fmt: skip
    assert models.PythonJobSpec.model_validate(dumped) == spec


def test_every_phase_maps_to_a_contract_status() -> None:
    from tako_vm.models.wire import TERMINAL_STATUSES

    phases = crd_schema("PythonJob")["properties"]["status"]["properties"]["phase"]["enum"]
    assert set(models.CONTRACT_STATUS_BY_PHASE) == set(phases)
    terminal = {models.CONTRACT_STATUS_BY_PHASE[p] for p in models.TERMINAL_PHASES}
    assert terminal == set(TERMINAL_STATUSES)
    assert set(models.CONTRACT_STATUS_BY_PHASE.values()) == set(TERMINAL_STATUSES) | {"queued", "running"}
