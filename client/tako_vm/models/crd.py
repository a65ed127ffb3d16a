"""Pydantic models of the ``PythonJob`` and ``PythonJobType`` custom resources (``takovm.dev/v1alpha1``).

They mirror ``crds/*.yaml`` field by field (camelCase on the wire, snake_case in code); the unit test
``tests/unit/test_crd_schema.py`` compares the two schemas, so a bound changed in one place fails there.
Specs reject unknown fields (what we accept); statuses ignore them (what a newer operator may write).
Checks a CRD can only express in CEL (exactly one code source, the reserved label prefix, non-blank code)
are repeated here as validators, so the shim and tests reject bad input without an API server.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "takovm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
RESERVED_LABEL_PREFIX = "takovm.dev/"

CODE_MAX_CHARS = 100_000
INPUT_MAX_SERIALIZED_BYTES = 1_048_576
REQUIREMENTS_MAX_ITEMS = 50
REQUIREMENT_MAX_CHARS = 256
TIMEOUT_MIN, TIMEOUT_MAX = 1, 86_400
STARTUP_TIMEOUT_MIN, STARTUP_TIMEOUT_MAX = 10, 600
STATUS_STREAM_MAX_CHARS = 16_384
POD_LABELS_MAX = 16
STATUS_ARTIFACTS_MAX = 32

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIGMAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
JOB_TYPE_REF_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(@[a-zA-Z0-9_.@:-]+)?$"
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_-]+$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
CPU_PATTERN = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$"
# The requirement grammar, defined once: `name[extra, ...] op version, op version` (PEP 508 names and
# extras, PEP 440 comparison operators); no URLs, paths, options (-e, --index-url), markers, newlines
# or shell characters. Only ASCII, spaces and tabs (PEP 508's whitespace) between the parts, none
# around the whole. The CRD schema's `pattern` is this string (tests/unit/test_crd_schema.py), the shim
# checks with `is_requirement`, and the runner keeps a stdlib copy pinned to it by
# tests/unit/test_requirement_grammar.py. It is valid in Python's re, Rust's regex (pydantic) and
# RE2 (the API server): no lookaround, no \s (which is Unicode-wide in Python), no \Z.
_REQ_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
_REQ_WS = r"[ \t]*"
_REQ_CLAUSE = rf"(===|==|!=|<=|>=|~=|<|>){_REQ_WS}[A-Za-z0-9][A-Za-z0-9.*+!-]*"
REQUIREMENT_PATTERN = (
    rf"^{_REQ_NAME}({_REQ_WS}\[{_REQ_WS}{_REQ_NAME}({_REQ_WS},{_REQ_WS}{_REQ_NAME})*{_REQ_WS}\])?"
    rf"({_REQ_WS}{_REQ_CLAUSE}({_REQ_WS},{_REQ_WS}{_REQ_CLAUSE})*)?$"
)
_REQUIREMENT_RE = re.compile(REQUIREMENT_PATTERN)


def is_requirement(entry: str) -> bool:
    """Whether `entry` is one requirement of the grammar above, exactly (no stripping).

    `fullmatch`, because Python's `$` also matches before a final newline (RE2 and Rust do not)."""
    return len(entry) <= REQUIREMENT_MAX_CHARS and _REQUIREMENT_RE.fullmatch(entry) is not None


LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
ERROR_TYPE_PATTERN = r"^[a-z][a-z0-9_]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
WEBHOOK_URL_MAX_CHARS = 2048
WEBHOOK_URL_PATTERN = r"^https?://[^\s]+$"

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Timeout", "OOM", "Cancelled"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Timeout", "OOM", "Cancelled"})
# PythonJob phase -> the REST contract's record status (GET /jobs/{id} shows "pending" for queued jobs).
CONTRACT_STATUS_BY_PHASE: dict[str, str] = {
    "Pending": "queued",
    "Queued": "queued",
    "Running": "running",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Timeout": "timeout",
    "OOM": "oom",
    "Cancelled": "cancelled",
}
RunnerPhase = Literal["startup", "execution", "completed", "failed"]
ConditionStatus = Literal["True", "False", "Unknown"]

Requirement = Annotated[
    str, Field(min_length=1, max_length=REQUIREMENT_MAX_CHARS, pattern=REQUIREMENT_PATTERN)
]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


class _Observed(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )


class _ApiObject(_Observed):
    """A whole object as read from the API: its metadata kept as a plain dict."""

    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")


class CodeRef(_Spec):
    """A ConfigMap key in the job's namespace that holds the code."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field(default="main.py", min_length=1, max_length=253, pattern=CONFIGMAP_KEY_PATTERN)


class Resources(_Spec):
    """Memory and CPU as Kubernetes quantities; requests equal limits."""

    memory: str | None = Field(default=None, max_length=16, pattern=MEMORY_PATTERN)
    cpu: str | None = Field(default=None, max_length=16, pattern=CPU_PATTERN)


class WebhookSpec(_Spec):
    """Where the operator POSTs the signed record when the job ends."""

    url: str = Field(min_length=8, max_length=WEBHOOK_URL_MAX_CHARS, pattern=WEBHOOK_URL_PATTERN)


class PythonJobSpec(_Spec):
    """What to run. Immutable after creation except ``cancel``."""

    code: str | None = Field(default=None, min_length=1, max_length=CODE_MAX_CHARS)
    code_ref: CodeRef | None = None
    input_data: dict[str, Any] | None = None
    requirements: list[Requirement] | None = Field(default=None, max_length=REQUIREMENTS_MAX_ITEMS)
    job_type: str = Field(default="default", min_length=1, max_length=128, pattern=JOB_TYPE_REF_PATTERN)
    timeout_seconds: int | None = Field(default=None, ge=TIMEOUT_MIN, le=TIMEOUT_MAX)
    startup_timeout_seconds: int | None = Field(default=None, ge=STARTUP_TIMEOUT_MIN, le=STARTUP_TIMEOUT_MAX)
    resources: Resources | None = None
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000)
    idempotency_key: str | None = Field(
        default=None, min_length=8, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN
    )
    parent_job: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    relationship: Literal["rerun", "fork"] | None = None
    pod_labels: dict[str, LabelValue] | None = Field(default=None, max_length=POD_LABELS_MAX)
    webhook: WebhookSpec | None = None
    cancel: bool = False

    @field_validator("code")
    @classmethod
    def _code_not_blank(cls, code: str | None) -> str | None:
        if code is not None and not code.strip():
            raise ValueError("spec.code must not be blank")
        return code

    @field_validator("input_data")
    @classmethod
    def _input_data_fits(cls, input_data: dict[str, Any] | None) -> dict[str, Any] | None:
        if input_data is not None:
            size = len(json.dumps(input_data, separators=(",", ":")).encode())
            if size > INPUT_MAX_SERIALIZED_BYTES:
                raise ValueError(
                    f"spec.inputData is {size} bytes serialized; the limit is {INPUT_MAX_SERIALIZED_BYTES}"
                )
        return input_data

    @field_validator("pod_labels")
    @classmethod
    def _pod_labels_allowed(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key in labels or {}:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(
                    f"spec.podLabels key {key!r} uses the reserved prefix {RESERVED_LABEL_PREFIX}"
                )
            if len(key) > 316 or not re.fullmatch(LABEL_KEY_PATTERN, key):
                raise ValueError(f"spec.podLabels key {key!r} is not a valid label key")
        return labels

    @model_validator(mode="after")
    def _one_code_source_and_lineage(self) -> PythonJobSpec:
        if (self.code is None) == (self.code_ref is None):
            raise ValueError("exactly one of spec.code or spec.codeRef must be set")
        if (self.parent_job is None) != (self.relationship is None):
            raise ValueError("spec.parentJob and spec.relationship must be set together")
        return self

    @property
    def job_type_name(self) -> str:
        """The PythonJobType name without its ``@version`` suffix."""
        return self.job_type.split("@", 1)[0]


class Condition(_Observed):
    """A ``metav1.Condition``."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)
    status: ConditionStatus
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: datetime
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    message: str = Field(max_length=32_768)


class JobError(_Observed):
    """Why a job did not succeed (the contract's ``error`` object)."""

    type: str = Field(min_length=1, max_length=64, pattern=ERROR_TYPE_PATTERN)
    message: str = Field(max_length=4096)
    phase: RunnerPhase | None = None


class Timing(_Observed):
    """Milliseconds per phase, as the runner measured them."""

    startup_ms: int | None = Field(default=None, ge=0)
    dep_install_ms: int | None = Field(default=None, ge=0)
    execution_ms: int | None = Field(default=None, ge=0)
    total_ms: int | None = Field(default=None, ge=0)
    phase_at_exit: RunnerPhase | None = None


class Artifact(_Observed):
    """A file the code left in ``/output``."""

    name: str = Field(min_length=1, max_length=255)
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str | None = Field(default=None, max_length=127)


class WebhookStatus(_Observed):
    """Delivery state of the completion webhook (``tako_vm.models.pythonjob.webhook_status``)."""

    webhook_id: str | None = Field(default=None, max_length=300)
    state: Literal["waiting", "pending", "delivered", "failed"] | None = None
    attempts: int | None = Field(default=None, ge=0)
    last_status_code: int | None = Field(default=None, ge=100, le=599)
    last_error: str | None = Field(default=None, max_length=1024)
    next_attempt_time: datetime | None = None
    window_end_time: datetime | None = None
    delivered_time: datetime | None = None


class PythonJobStatus(_Observed):
    """Observed state of a PythonJob; written only by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: Phase | None = None
    message: str | None = Field(default=None, max_length=1024)
    conditions: list[Condition] | None = Field(default=None, max_length=8)
    exit_code: int | None = Field(default=None, ge=-255, le=255)
    stdout: str | None = Field(default=None, max_length=STATUS_STREAM_MAX_CHARS)
    stderr: str | None = Field(default=None, max_length=STATUS_STREAM_MAX_CHARS)
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None
    output: dict[str, Any] | None = None
    output_truncated: bool | None = None
    error: JobError | None = None
    timing: Timing | None = None
    duration: str | None = Field(default=None, max_length=32)
    artifacts: list[Artifact] | None = Field(default=None, max_length=STATUS_ARTIFACTS_MAX)
    artifacts_omitted: int | None = Field(default=None, ge=0)
    attempts: int | None = Field(default=None, ge=0, le=100)
    pod_name: str | None = Field(default=None, max_length=253)
    runtime: str | None = Field(default=None, max_length=63)
    job_type_resolved: str | None = Field(default=None, max_length=63)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook: WebhookStatus | None = None

    @property
    def is_terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


class PythonJob(_ApiObject):
    """A whole PythonJob object as read from the API (metadata kept as a plain dict)."""

    api_version: Literal["takovm.dev/v1alpha1"] = "takovm.dev/v1alpha1"
    kind: Literal["PythonJob"] = "PythonJob"
    spec: PythonJobSpec
    status: PythonJobStatus | None = None


class EnvVar(_Spec):
    """A plain environment variable (no ``valueFrom``: job types carry no secrets)."""

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN)
    value: str = Field(max_length=32_768)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith("TAKO_") or name == "PYTHONPATH":
            raise ValueError("env names starting with TAKO_ and PYTHONPATH are reserved")
        return name


class LocalObjectReference(_Spec):
    """A reference by name to an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)


class JobTypeResources(_Spec):
    """Memory and CPU for each job of a type (requests equal limits)."""

    memory: str = Field(default="512Mi", max_length=16, pattern=MEMORY_PATTERN)
    cpu: str = Field(default="1", max_length=16, pattern=CPU_PATTERN)


class PythonJobTypeSpec(_Spec):
    """A pre-built environment: image, preinstalled packages, limits and defaults."""

    description: str | None = Field(default=None, max_length=1024)
    image: str = Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")
    image_pull_secrets: list[LocalObjectReference] | None = Field(default=None, max_length=8)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    python_version: str = Field(default="3.11", pattern=r"^3\.[0-9]{1,2}$")
    requirements: list[Annotated[str, Field(min_length=1, max_length=REQUIREMENT_MAX_CHARS)]] | None = Field(
        default=None, max_length=200
    )
    resources: JobTypeResources = Field(default_factory=JobTypeResources)
    timeout_seconds: int = Field(default=30, ge=TIMEOUT_MIN, le=TIMEOUT_MAX)
    startup_timeout_seconds: int = Field(default=120, ge=STARTUP_TIMEOUT_MIN, le=STARTUP_TIMEOUT_MAX)
    allow_runtime_requirements: bool = False
    standby_pods: int = Field(default=0, ge=0, le=20)
    env: list[EnvVar] | None = Field(default=None, max_length=64)

    @field_validator("env")
    @classmethod
    def _env_names_unique(cls, env: list[EnvVar] | None) -> list[EnvVar] | None:
        names = [var.name for var in env or []]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"spec.env names must be unique; repeated: {', '.join(duplicates)}")
        return env


class PythonJobTypeStatus(_Observed):
    """Observed state of a PythonJobType (kstatus conditions); written only by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] | None = Field(default=None, max_length=4)


class PythonJobType(_ApiObject):
    """A whole PythonJobType object as read from the API."""

    api_version: Literal["takovm.dev/v1alpha1"] = "takovm.dev/v1alpha1"
    kind: Literal["PythonJobType"] = "PythonJobType"
    spec: PythonJobTypeSpec
    status: PythonJobTypeStatus | None = None


DEFAULT_JOB_TYPE_NAME = "default"
DEFAULT_JOB_TYPE = PythonJobTypeSpec(
    description="Built-in default: plain CPython 3.11, no preinstalled packages.",
    image="python:3.11-slim",
    resources=JobTypeResources(memory="512Mi", cpu="1"),
    timeout_seconds=30,
    startup_timeout_seconds=120,
)


# --- PythonSession (a stateful interpreter in one gVisor Pod; docs/sessions.md, "Kubernetes") --------

SessionPhase = Literal["Pending", "Ready", "Ended"]
# The shim writes only these annotations on a PythonSession (the status belongs to the operator, which
# mirrors them): the runner's execution count, the end of the last execution, and a requested end.
SESSION_ANNOTATION_EXECUTIONS = "takovm.dev/executions"
SESSION_ANNOTATION_LAST_ACTIVITY = "takovm.dev/last-activity"
SESSION_ANNOTATION_END = "takovm.dev/end-requested"  # "deleted" or "killed_after_timeout"
SESSION_ANNOTATION_TENANT = "takovm.dev/tenant"
SESSION_ANNOTATION_FINGERPRINT = "takovm.dev/fingerprint"  # of the create request (idempotency)
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"
SESSION_TTL_MAX = 2_592_000  # 30 days (the CRD's bound; the shim's session_max_ttl_seconds is lower)
END_REASON_PATTERN = r"^[a-z][a-z0-9_]*$"


class PythonSessionSpec(_Spec):
    """How the session's Pod is built and how long it may live (immutable: one CEL rule on the spec)."""

    job_type: str = Field(default="default", min_length=1, max_length=128, pattern=JOB_TYPE_REF_PATTERN)
    ttl_seconds: int = Field(default=3600, ge=1, le=SESSION_TTL_MAX)
    idle_timeout_seconds: int = Field(default=600, ge=1, le=SESSION_TTL_MAX)
    resources: Resources | None = None
    # Installed by the Pod's install init container, with install egress, before the session takes code.
    requirements: list[Requirement] | None = Field(default=None, max_length=REQUIREMENTS_MAX_ITEMS)
    # sha256 (hex) of the session's token: the shim derives the token (HMAC of its session key and the
    # session's namespace/name), the session server in the Pod accepts only a token with this hash.
    token_sha256: str | None = Field(default=None, max_length=64, pattern=SHA256_HEX_PATTERN)

    @property
    def job_type_name(self) -> str:
        return self.job_type.split("@", 1)[0]


class PythonSessionStatus(_Observed):
    """Observed state of a PythonSession; written only by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: SessionPhase | None = None
    message: str | None = Field(default=None, max_length=1024)
    conditions: list[Condition] | None = Field(default=None, max_length=8)
    pod_name: str | None = Field(default=None, max_length=253)
    address: str | None = Field(default=None, max_length=64)
    expires_at: datetime | None = None
    last_activity_time: datetime | None = None
    executions: int | None = Field(default=None, ge=0)
    end_reason: str | None = Field(default=None, max_length=64, pattern=END_REASON_PATTERN)
    ended_at: datetime | None = None


class PythonSession(_ApiObject):
    """A whole PythonSession object as read from the API."""

    api_version: Literal["takovm.dev/v1alpha1"] = "takovm.dev/v1alpha1"
    kind: Literal["PythonSession"] = "PythonSession"
    spec: PythonSessionSpec = Field(default_factory=PythonSessionSpec)
    status: PythonSessionStatus | None = None
