"""Pure request resolution: an ``ExecuteRequest`` (or a rerun/fork of a parent) -> a ``Submission``.

Applies the server's rules: job type lookup (``name@version`` -> ``name``), timeout defaults and the
``max_timeout`` ceiling, the runtime-requirements switch and requirement syntax. Every refusal is an
``InvalidRequest`` (HTTP 422) whose message names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tako_shim.config import JobTypeConfig, Settings
from tako_shim.errors import InvalidRequest
from tako_vm.models.crd import is_requirement
from tako_vm.models.pythonjob import canonical_json, sha256_hex
from tako_vm.models.wire import ExecuteRequest, JobTypeResponse


@dataclass(frozen=True)
class Submission:
    """A validated, resolved job: what a backend needs to run it (job type and timeouts resolved)."""

    code: str
    input_data: dict[str, Any]
    job_type: str
    timeout: int
    startup_timeout: int
    requirements: list[str] = field(default_factory=list)
    idempotency_key: str | None = None
    fingerprint: str | None = None
    correlation_id: str | None = None
    parent_execution_id: str | None = None
    relationship: str | None = None
    webhook_url: str | None = None  # as requested; the backend applies the tenant default and checks it
    # The request left these unset, so a backend that knows more about the job type than the
    # resolver (the kubernetes backend reads PythonJobTypes) may replace the defaults.
    timeout_defaulted: bool = False
    startup_timeout_defaulted: bool = False


@dataclass(frozen=True)
class Overrides:
    """Optional fields of a rerun or fork; ``None`` keeps the parent's value."""

    code: str | None = None
    job_type: str | None = None
    timeout: int | None = None


def submission_fingerprint(
    *,
    code: str,
    input_data: dict[str, Any],
    job_type: str | None,
    timeout: int | None,
    startup_timeout: int | None,
    requirements: list[str] | None,
) -> str:
    """What makes two submissions with one idempotency key "the same" (as requested, before defaults)."""
    return sha256_hex(
        canonical_json(
            {
                "code_hash": sha256_hex(code),
                "input_hash": sha256_hex(canonical_json(input_data)),
                "job_type": (job_type or "default").split("@", 1)[0],
                "timeout": timeout,
                "startup_timeout": startup_timeout,
                "requirements": requirements or [],
            }
        )
    )


DEFAULT_JOB_TYPE = "default"
RUNTIME_REQUIREMENTS_DISABLED = (
    "Runtime dependency installation is disabled on this server: set allow_runtime_requirements: true "
    "in tako_vm.yaml or TAKO_VM_ALLOW_RUNTIME_REQUIREMENTS=true (installs run in a separate sandbox "
    "with network access), or choose a job_type that has the packages"
)


def check_requirements(requirements: list[str], field: str = "requirements") -> None:
    """Each entry, stripped, must be a plain ``name[extras](op version, ...)`` spec: no URLs, paths or
    options (the one grammar, ``tako_vm.models.crd.REQUIREMENT_PATTERN``, which the CRD also states)."""
    for index, entry in enumerate(requirements):
        if not is_requirement(entry.strip()):
            raise InvalidRequest(f"{field}[{index}]: {entry[:80]!r} is not a valid requirement specifier")


class JobResolver:
    """Resolves requests against one ``Settings``; holds no other state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        builtin = JobTypeConfig(name=DEFAULT_JOB_TYPE, startup_timeout=settings.default_startup_timeout)
        self._types: dict[str, JobTypeConfig] = {DEFAULT_JOB_TYPE: builtin}
        self._types.update({jt.name: jt for jt in settings.job_types})

    def job_type(self, name: str | None) -> JobTypeConfig:
        base = (name or DEFAULT_JOB_TYPE).split("@", 1)[0]
        found = self._types.get(base)
        if found is None:
            known = ", ".join(sorted(self._types))
            raise InvalidRequest(f"job_type: unknown job type '{base}' (available: {known})")
        return found

    def job_types(self) -> list[JobTypeResponse]:
        return [self.describe(jt) for jt in self._types.values()]

    def describe(self, jt: JobTypeConfig) -> JobTypeResponse:
        return JobTypeResponse(
            name=jt.name,
            requirements=list(jt.requirements),
            python_version=jt.python_version,
            memory_limit=jt.memory_limit,
            cpu_limit=jt.cpu_limit,
            timeout=jt.timeout or self.settings.default_timeout,
            image_exists=True,
            network_enabled=False,
            startup_timeout=jt.startup_timeout,
        )

    def _timeout(self, requested: int | None, jt: JobTypeConfig) -> int:
        timeout = requested or jt.timeout or self.settings.default_timeout
        if timeout > self.settings.max_timeout:
            raise InvalidRequest(
                f"timeout: {timeout} seconds exceeds this server's max_timeout of "
                f"{self.settings.max_timeout} seconds"
            )
        return timeout

    def _requirements(self, requested: list[str] | None, jt: JobTypeConfig) -> list[str]:
        if requested:
            if not self.settings.allow_runtime_requirements:
                raise InvalidRequest(f"requirements: {RUNTIME_REQUIREMENTS_DISABLED}")
            check_requirements(requested)
        return [*jt.requirements, *(r.strip() for r in requested or [])]

    def resolve(self, request: ExecuteRequest, correlation_id: str | None = None) -> Submission:
        jt = self.job_type(request.job_type)
        return Submission(
            code=request.code,
            input_data=request.input_data,
            job_type=jt.name,
            timeout=self._timeout(request.timeout, jt),
            startup_timeout=request.startup_timeout or jt.startup_timeout,
            requirements=self._requirements(request.requirements, jt),
            idempotency_key=request.idempotency_key,
            fingerprint=submission_fingerprint(
                code=request.code,
                input_data=request.input_data,
                job_type=request.job_type,
                timeout=request.timeout,
                startup_timeout=request.startup_timeout,
                requirements=request.requirements,
            )
            if request.idempotency_key
            else None,
            correlation_id=correlation_id,
            webhook_url=request.webhook_url,
            timeout_defaulted=request.timeout is None,
            startup_timeout_defaulted=request.startup_timeout is None,
        )

    def derive(
        self, parent: Submission, parent_id: str, relationship: str, overrides: Overrides
    ) -> Submission:
        """A rerun or fork: the parent's submission with ``overrides`` applied and no idempotency key.

        The parent's requirements and startup timeout are kept; its timeout is kept unless
        overridden, and still must fit under ``max_timeout`` of the new job type.
        """
        jt = self.job_type(overrides.job_type or parent.job_type)
        return replace(
            parent,
            code=overrides.code if overrides.code is not None else parent.code,
            job_type=jt.name,
            timeout=self._timeout(overrides.timeout or parent.timeout, jt),
            idempotency_key=None,
            fingerprint=None,
            webhook_url=None,  # a rerun or fork gets the tenant's default webhook, not the parent's
            parent_execution_id=parent_id,
            relationship=relationship,
            timeout_defaulted=False,  # the parent's timeouts are kept, not the job type's
            startup_timeout_defaulted=False,
        )

    def with_job_type_timeouts(
        self, submission: Submission, timeout: int | None, startup_timeout: int | None
    ) -> Submission:
        """Fill the timeouts the request left unset from the job type's (``None``: it sets none).

        A job type's timeout above ``max_timeout`` is refused like a requested one (422)."""
        if timeout is not None and submission.timeout_defaulted:
            if timeout > self.settings.max_timeout:
                raise InvalidRequest(
                    f"job_type: '{submission.job_type}' has a timeout of {timeout} seconds, above this "
                    f"server's max_timeout of {self.settings.max_timeout} seconds; pass a timeout"
                )
            submission = replace(submission, timeout=timeout)
        if startup_timeout is not None and submission.startup_timeout_defaulted:
            submission = replace(submission, startup_timeout=startup_timeout)
        return submission
