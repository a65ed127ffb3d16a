"""Pure translation between the REST contract and ``PythonJob`` objects (plain dicts, no API calls).

The kubernetes backend composes these with its API module; everything here is unit-tested without a
server (``tests/unit/test_kube_translate.py``).

- A tenant is a namespace (``namespace_for``); a job id is the PythonJob's name, a UUID string.
- With an idempotency key the name is ``uuid5(tenant + key)``: the same key from the same tenant
  always names the same object, so a retried POST meets ``409 AlreadyExists``; the payload
  fingerprint sits in the ``takovm.dev/fingerprint`` annotation to tell a replay from a conflict.
- Jobs created by the shim get the ``takovm.dev/job-type`` label: history filters on it with a label
  selector (and again client-side, since not every API server, e.g. kmock, applies selectors).
- Job types are the tenant namespace's ``PythonJobType`` objects plus the built-in ``default`` (as the
  operator resolves them). ``ClusterJobResolver`` lets any name through the synchronous request
  resolution; the backend checks it against the cluster at submit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, cast

from pydantic import ValidationError

from tako_shim.backends.base import RecordFilter, RecordPage, Submission
from tako_shim.config import JobTypeConfig, KubernetesOptions
from tako_shim.errors import InvalidRequest
from tako_shim.submission import JobResolver
from tako_vm.models.crd import (
    API_VERSION,
    DEFAULT_JOB_TYPE,
    DEFAULT_JOB_TYPE_NAME,
    DNS_SUBDOMAIN_PATTERN,
    CodeRef,
    PythonJobSpec,
    PythonJobTypeSpec,
    WebhookSpec,
)
from tako_vm.models.pythonjob import (
    contract_status,
    duration_ms_of,
    is_terminal,
    iso_time,
    record_from_job,
    webhook_of,
)
from tako_vm.models.pythonjob import job_meta as _meta
from tako_vm.models.pythonjob import job_spec as _spec
from tako_vm.models.pythonjob import job_status as _status
from tako_vm.models.wire import ExecutionRecordFull, JobStatusResponse, JobTypeResponse

ANNOTATION_FINGERPRINT = "takovm.dev/fingerprint"
ANNOTATION_CORRELATION_ID = "takovm.dev/correlation-id"
ANNOTATION_TENANT = "takovm.dev/tenant"
LABEL_JOB_TYPE = "takovm.dev/job-type"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tako-shim"
DEFAULT_TENANT = "default"
# Fixed namespace of the uuid5 names derived from (tenant, idempotency key); never change it.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c3f0e-7a51-4b8e-9a3c-2d7c1b0e5a11")
_JOB_NAME_RE = re.compile(DNS_SUBDOMAIN_PATTERN)


def namespace_for(tenant: str, options: KubernetesOptions) -> str:
    """The namespace holding ``tenant``'s jobs: an explicit mapping, else ``namespace`` for the default
    tenant, else the tenant's own name (tenants are DNS labels, checked in the configuration)."""
    if tenant in options.tenant_namespaces:
        return options.tenant_namespaces[tenant]
    return options.namespace if tenant == DEFAULT_TENANT else tenant


def job_name(tenant: str, idempotency_key: str | None) -> str:
    """A new random job id, or the deterministic one for (tenant, key)."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant}\x00{idempotency_key}"))


def is_job_name(value: str) -> bool:
    """Could ``value`` name a PythonJob? Anything else is answered 404 without an API call."""
    return 0 < len(value) <= 253 and _JOB_NAME_RE.match(value) is not None


def _spec_error(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "spec"
    message = first["msg"].removeprefix("Value error, ")
    field = {"jobType": "job_type", "job_type": "job_type"}.get(where, where)
    if field == "job_type":
        message = "job type names must be lowercase DNS labels for the kubernetes backend"
    return InvalidRequest(f"{field}: {message}")


def job_object(
    name: str,
    namespace: str,
    tenant: str,
    submission: Submission,
    code_ref: tuple[str, str] | None = None,
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """The PythonJob to create for ``submission``; ``InvalidRequest`` naming the field if it cannot be.

    ``code_ref`` (``(configmap, key)``) replaces ``submission.code``: a rerun of a job whose code is in
    a ConfigMap points at the same ConfigMap instead of copying the code (the shim may not read it).
    ``webhook_url`` (already checked, ``tako_shim.webhooks.dispatcher.accepted_url``) goes to
    ``spec.webhook.url``: the operator sends the completion webhook.
    """
    requirements = list(submission.requirements)
    try:
        spec = PythonJobSpec(
            code=None if code_ref else submission.code,
            code_ref=CodeRef(name=code_ref[0], key=code_ref[1]) if code_ref else None,
            input_data=submission.input_data,
            requirements=requirements or None,
            job_type=submission.job_type,
            timeout_seconds=submission.timeout,
            startup_timeout_seconds=submission.startup_timeout,
            idempotency_key=submission.idempotency_key,
            parent_job=submission.parent_execution_id,
            relationship=cast(Any, submission.relationship),
            webhook=WebhookSpec(url=webhook_url) if webhook_url else None,
        )
    except ValidationError as exc:
        raise _spec_error(exc) from None
    annotations = {ANNOTATION_TENANT: tenant}
    if submission.fingerprint:
        annotations[ANNOTATION_FINGERPRINT] = submission.fingerprint
    if submission.correlation_id:
        annotations[ANNOTATION_CORRELATION_ID] = submission.correlation_id[:128]
    return {
        "apiVersion": API_VERSION,
        "kind": "PythonJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB_TYPE: spec.job_type_name},
            "annotations": annotations,
        },
        "spec": spec.model_dump(exclude_none=True, exclude_defaults=True) | {"jobType": spec.job_type},
    }


def cancel_patch() -> dict[str, Any]:
    """The merge patch that asks the operator to cancel (``spec.cancel`` is the only mutable field)."""
    return {"spec": {"cancel": True}}


def job_type_selector(job_type: str | None) -> str | None:
    return f"{LABEL_JOB_TYPE}={job_type.split('@', 1)[0]}" if job_type else None


# -- reading objects ----------------------------------------------------------------------------------


def fingerprint_of(job: dict[str, Any]) -> str | None:
    value = (_meta(job).get("annotations") or {}).get(ANNOTATION_FINGERPRINT)
    return str(value) if value else None


def status_from_job(job: dict[str, Any]) -> JobStatusResponse:
    """``GET /jobs/{id}``: a queued job reads ``pending``. The queue position is not reported: the
    operator admits jobs by one limit across namespaces, so a per-tenant position would mislead."""
    status = contract_status(job)
    created = iso_time(_meta(job).get("creationTimestamp"))
    webhook = webhook_of(job)
    if status == "queued":
        return JobStatusResponse(
            job_id=str(_meta(job).get("name")), status="pending", created_at=created, webhook=webhook
        )
    return JobStatusResponse(
        job_id=str(_meta(job).get("name")),
        status=status,
        created_at=created,
        duration_ms=duration_ms_of(_status(job)) if is_terminal(job) else None,
        webhook=webhook,
    )


def submission_from_job(
    job: dict[str, Any], *, code: str, default_timeout: int, default_startup_timeout: int
) -> Submission:
    """What a PythonJob was submitted with, for a rerun or fork (``code`` is the caller's: ``""`` for a
    job whose code is in a ConfigMap, see ``code_ref``). Unset timeouts (jobs created with kubectl)
    take the given defaults."""
    spec = _spec(job)
    annotations = _meta(job).get("annotations") or {}
    return Submission(
        code=code,
        input_data=dict(spec.get("inputData") or {}),
        job_type=str(spec.get("jobType") or "default").split("@", 1)[0],
        timeout=int(spec.get("timeoutSeconds") or default_timeout),
        startup_timeout=int(spec.get("startupTimeoutSeconds") or default_startup_timeout),
        requirements=list(spec.get("requirements") or []),
        correlation_id=annotations.get(ANNOTATION_CORRELATION_ID),
    )


def code_ref(job: dict[str, Any]) -> tuple[str, str] | None:
    """``(configmap, key)`` when the job's code lives in a ConfigMap."""
    ref = _spec(job).get("codeRef")
    if not isinstance(ref, dict):
        return None
    return str(ref.get("name")), str(ref.get("key") or "main.py")


# -- job types ----------------------------------------------------------------------------------------


class ClusterJobResolver(JobResolver):
    """Request resolution for the kubernetes backend: job types live in the cluster, which the
    synchronous resolver cannot ask, so any name passes here (unset timeouts take the shim's
    defaults) and the backend rejects a name its namespace does not define when it submits."""

    def job_type(self, name: str | None) -> JobTypeConfig:
        base = (name or DEFAULT_JOB_TYPE_NAME).split("@", 1)[0]
        # model_construct: the name is checked (as a DNS label) when the PythonJob is built.
        return JobTypeConfig.model_construct(
            name=base,
            requirements=[],
            image=None,
            python_version="3.11",
            memory_limit="512m",
            cpu_limit=1.0,
            timeout=None,
            startup_timeout=self.settings.default_startup_timeout,
            environment={},
            network_enabled=False,
        )


def _memory_limit(quantity: str) -> str:
    """A Kubernetes quantity in the contract's ``512m``/``2g`` style where it maps exactly."""
    for suffix, short in (("Mi", "m"), ("Gi", "g"), ("M", "m"), ("G", "g")):
        if quantity.endswith(suffix) and quantity[: -len(suffix)].isdigit():
            return quantity[: -len(suffix)] + short
    return quantity


def _cpu_limit(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def job_type_response(name: str, spec: PythonJobTypeSpec) -> JobTypeResponse:
    """``GET /job-types`` entry for a PythonJobType. User code never has a network; only the install
    of runtime requirements does, so ``network_enabled`` is always false."""
    return JobTypeResponse(
        name=name,
        requirements=list(spec.requirements or []),
        python_version=spec.python_version,
        memory_limit=_memory_limit(spec.resources.memory),
        cpu_limit=_cpu_limit(spec.resources.cpu),
        timeout=spec.timeout_seconds,
        image_exists=True,
        network_enabled=False,
        startup_timeout=spec.startup_timeout_seconds,
    )


def job_types_from_objects(objects: list[dict[str, Any]]) -> list[JobTypeResponse]:
    """The built-in ``default`` (unless the namespace defines its own), then the namespace's
    PythonJobTypes by name. An object whose spec does not validate is left out (the operator
    cannot run jobs of it either)."""
    found: dict[str, PythonJobTypeSpec] = {}
    for obj in objects:
        name = str(_meta(obj).get("name") or "")
        try:
            found[name] = PythonJobTypeSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue
    default = found.pop(DEFAULT_JOB_TYPE_NAME, DEFAULT_JOB_TYPE)
    return [
        job_type_response(DEFAULT_JOB_TYPE_NAME, default),
        *(job_type_response(name, found[name]) for name in sorted(found)),
    ]


def unknown_job_type(name: str, known: list[str]) -> InvalidRequest:
    """The error for a job type the tenant's namespace does not define (as the local backend says it)."""
    return InvalidRequest(f"job_type: unknown job type '{name}' (available: {', '.join(sorted(known))})")


# -- history ------------------------------------------------------------------------------------------


def _matches(job: dict[str, Any], query: RecordFilter) -> bool:
    if query.session_id:  # a PythonJob never ran in a session
        return False
    if query.status:
        wanted = "queued" if query.status == "pending" else query.status
        if contract_status(job) != wanted:
            return False
    if query.job_type:
        spec_type = str(_spec(job).get("jobType") or "default").split("@", 1)[0]
        if spec_type != query.job_type.split("@", 1)[0]:
            return False
    return True


def _sort_key(job: dict[str, Any]) -> tuple[str, str]:
    meta = _meta(job)
    return (iso_time(meta.get("creationTimestamp")) or "", str(meta.get("name")))


def page_of(
    jobs: list[dict[str, Any]], query: RecordFilter, session_records: Sequence[ExecutionRecordFull] = ()
) -> RecordPage:
    """Newest first, filtered, then ``offset``/``limit`` (the API lists by name, so sorting is ours).
    ``session_records``: the session executions (their ConfigMaps, already this tenant's), mixed in."""
    keyed: list[tuple[tuple[str, str], Any]] = [(_sort_key(j), j) for j in jobs if _matches(j, query)]
    keyed += [((r.created_at, r.execution_id), r) for r in session_records if _record_matches(r, query)]
    matching = [item for _, item in sorted(keyed, key=lambda pair: pair[0], reverse=True)]
    window = matching[query.offset : query.offset + query.limit]
    return RecordPage(
        records=[item if isinstance(item, ExecutionRecordFull) else record_from_job(item) for item in window],
        has_more=len(matching) > query.offset + query.limit,
    )


def _record_matches(record: ExecutionRecordFull, query: RecordFilter) -> bool:
    if query.session_id and record.session_id != query.session_id:
        return False
    if query.status and record.status != ("queued" if query.status == "pending" else query.status):
        return False
    return not query.job_type or record.job_type == query.job_type.split("@", 1)[0]


def count_active(jobs: list[dict[str, Any]]) -> tuple[int, int]:
    """(queued, running) among ``jobs``."""
    statuses = [contract_status(j) for j in jobs]
    return statuses.count("queued"), statuses.count("running")
