"""Pure mapping between the ``/sessions`` wire models and ``PythonSession`` objects (no I/O).

The shim writes a PythonSession's spec once (``session_object``) and afterwards only its annotations
(``takovm.dev/executions``, ``takovm.dev/last-activity``, ``takovm.dev/end-requested``); the operator
owns the status. ``info_from_session`` reads both, so a DELETE or a killed cell shows as ended at once,
before the operator has recorded it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from tako_shim.backends.kubernetes.translate import IDEMPOTENCY_NAMESPACE, LABEL_MANAGED_BY, MANAGED_BY
from tako_shim.errors import InvalidRequest
from tako_shim.submission import RUNTIME_REQUIREMENTS_DISABLED, canonical_json, sha256_hex
from tako_vm.models.crd import (
    SESSION_ANNOTATION_END,
    SESSION_ANNOTATION_EXECUTIONS,
    SESSION_ANNOTATION_FINGERPRINT,
    SESSION_ANNOTATION_LAST_ACTIVITY,
    SESSION_ANNOTATION_TENANT,
    PythonSessionSpec,
)
from tako_vm.models.sessions import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_TTL_SECONDS,
    CreateSessionRequest,
    SessionError,
    SessionExecution,
    SessionInfo,
)
from tako_vm.models.wire import ExecutionError, ExecutionRecordFull

SESSION_PREFIX = "sess-"
_SESSION_ID = re.compile(r"^sess-[0-9a-f]{32}$")
KILLED_AFTER_TIMEOUT = "killed_after_timeout"


def session_name(tenant: str, idempotency_key: str | None) -> str:
    """A new random session id, or the deterministic one for (tenant, key)."""
    if idempotency_key is None:
        return SESSION_PREFIX + uuid.uuid4().hex
    return SESSION_PREFIX + uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"session\x00{tenant}\x00{idempotency_key}").hex


def is_session_id(value: str) -> bool:
    return bool(_SESSION_ID.match(value))


def fingerprint(body: CreateSessionRequest) -> str:
    return sha256_hex(canonical_json(body.model_dump(exclude={"idempotency_key"}, mode="json")))


def kube_memory(limit: str) -> str:
    """The wire's ``512m`` / ``2g`` (MiB / GiB, as the local backend reads them) as a Kubernetes quantity."""
    return f"{limit[:-1]}{'Mi' if limit.endswith('m') else 'Gi'}"


def kube_cpu(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def _megabytes(limit: str) -> int:
    return int(limit[:-1]) * (1024 if limit.endswith("g") else 1)


def session_object(
    name: str,
    namespace: str,
    tenant: str,
    body: CreateSessionRequest,
    *,
    token: str,
    max_ttl: int,
    max_memory: str,
    allow_requirements: bool = False,
) -> dict[str, Any]:
    """The PythonSession for ``POST /sessions`` (``InvalidRequest`` naming the limit it breaks).
    Requirements are installed by the session Pod's install step, with install egress, before the
    session takes any code (the job type must allow runtime requirements, as for jobs)."""
    if body.requirements and not allow_requirements:
        raise InvalidRequest(RUNTIME_REQUIREMENTS_DISABLED)
    ttl = body.ttl_seconds or min(DEFAULT_TTL_SECONDS, max_ttl)
    if ttl > max_ttl:
        raise InvalidRequest(f"ttl_seconds: {ttl} exceeds session_max_ttl_seconds {max_ttl}")
    spec: dict[str, Any] = {
        "jobType": body.job_type or "default",
        "ttlSeconds": ttl,
        "idleTimeoutSeconds": body.idle_timeout_seconds or DEFAULT_IDLE_TIMEOUT_SECONDS,
        "tokenSha256": token_sha256(token),
    }
    resources: dict[str, str] = {}
    if body.memory_limit:
        if _megabytes(body.memory_limit) > _megabytes(max_memory):
            raise InvalidRequest(
                f"memory_limit: {body.memory_limit} exceeds session_max_memory_limit {max_memory}"
            )
        resources["memory"] = kube_memory(body.memory_limit)
    if body.cpu_limit:
        resources["cpu"] = kube_cpu(body.cpu_limit)
    if resources:
        spec["resources"] = resources
    if body.requirements:
        spec["requirements"] = list(body.requirements)
        try:
            PythonSessionSpec.model_validate(spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            why = (
                first["msg"]
                if first["type"] != "string_pattern_mismatch"
                else ("not a plain requirement (name[extras] op version; no markers, URLs or options)")
            )
            raise InvalidRequest(f"{where}: {why}: {first.get('input')!r}"[:600]) from None
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonSession",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": {
                SESSION_ANNOTATION_TENANT: tenant,
                SESSION_ANNOTATION_FINGERPRINT: fingerprint(body),
            },
        },
        "spec": spec,
    }


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict(_meta(obj).get("annotations") or {})


def tenant_of(obj: dict[str, Any]) -> str | None:
    return _annotations(obj).get(SESSION_ANNOTATION_TENANT)


def fingerprint_of(obj: dict[str, Any]) -> str | None:
    return _annotations(obj).get(SESSION_ANNOTATION_FINGERPRINT)


def end_reason(obj: dict[str, Any]) -> str | None:
    """Why the session ended (the operator's record, or an end the shim asked for), or None if open."""
    status = obj.get("status") or {}
    if status.get("phase") == "Ended":
        return str(status.get("endReason") or "ended")
    requested = _annotations(obj).get(SESSION_ANNOTATION_END)
    return str(requested) if requested else None


def address(obj: dict[str, Any]) -> str | None:
    """host:port of the session's Pod, once the operator saw it ready."""
    status = obj.get("status") or {}
    if status.get("phase") != "Ready" or end_reason(obj) is not None:
        return None
    value = status.get("address")
    return str(value) if value else None


def startup_timeout(job_type: dict[str, Any] | None, default: int) -> int:
    """How long a session of this PythonJobType may take to become ready: the type's
    ``startupTimeoutSeconds`` (what the operator enforces), else ``default``."""
    value = ((job_type or {}).get("spec") or {}).get("startupTimeoutSeconds")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def info_from_session(obj: dict[str, Any]) -> SessionInfo:
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    annotations = _annotations(obj)
    created = _time(meta.get("creationTimestamp")) or datetime.now(UTC)
    ttl = int(spec.get("ttlSeconds") or DEFAULT_TTL_SECONDS)
    expires = _time(status.get("expiresAt")) or created + timedelta(seconds=ttl)
    reason = end_reason(obj)
    if reason is not None:
        state = "ended"
    elif status.get("phase") == "Ready":
        state = "ready"
    else:
        state = "starting"
    counted = [annotations.get(SESSION_ANNOTATION_EXECUTIONS), status.get("executions")]
    executions = max((int(str(c)) for c in counted if str(c or "").isdigit()), default=0)
    activity = _time(annotations.get(SESSION_ANNOTATION_LAST_ACTIVITY)) or _time(
        status.get("lastActivityTime")
    )
    ended = _time(status.get("endedAt"))
    return SessionInfo(
        session_id=str(meta.get("name")),
        status=state,
        created_at=iso(created),
        expires_at=iso(expires),
        last_activity=iso(activity) if activity else None,
        executions=executions,
        end_reason=reason,
        ended_at=iso(ended) if ended else None,
        job_type=str(spec.get("jobType") or "default"),
        ttl_seconds=ttl,
        idle_timeout_seconds=int(spec.get("idleTimeoutSeconds") or DEFAULT_IDLE_TIMEOUT_SECONDS),
        runtime="gvisor",
    )


def session_token(key: str, namespace: str, name: str) -> str:
    """The session's bearer token: any replica holding the shared key derives it; the cluster keeps
    only its sha256 (``spec.tokenSha256``), which is all the session server in the Pod knows."""
    return hmac.new(key.encode(), f"{namespace}/{name}".encode(), hashlib.sha256).hexdigest()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def activity_patch(number: int, now: datetime) -> dict[str, Any]:
    """After an execution: the runner's count and the time (the operator mirrors both into status)."""
    return {
        "metadata": {
            "annotations": {
                SESSION_ANNOTATION_EXECUTIONS: str(number),
                SESSION_ANNOTATION_LAST_ACTIVITY: iso(now),
            }
        }
    }


def end_patch(reason: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {SESSION_ANNOTATION_END: reason}}}


def execution_from_reply(
    execution_id: str, session_id: str, reply: dict[str, Any], elapsed_ms: int
) -> SessionExecution:
    said = reply.get("status")
    error = reply.get("error")
    duration = reply.get("duration_ms")
    return SessionExecution(
        execution_id=execution_id,
        session_id=session_id,
        status=said if said in ("succeeded", "failed", "timeout") else "failed",
        stdout=str(reply.get("stdout") or ""),
        stderr=str(reply.get("stderr") or ""),
        result=reply.get("result") if isinstance(reply.get("result"), str) else None,
        error=error if isinstance(error, dict) else None,
        duration_ms=duration if isinstance(duration, int) else elapsed_ms,
    )


ENDED_MESSAGES = {
    "oom_killed": "The session ran out of memory and was ended (state lost)",
    "crashed": "The session's interpreter exited; the session has ended",
    "expired": "The session reached its ttl_seconds during this call and has ended",
    "idle": "The session was ended for idleness during this call",
    "deleted": "The session was deleted during this call",
}


def ended_during_call(
    execution_id: str, session_id: str, reason: str, elapsed_ms: int, grace: int, limit: int
) -> SessionExecution:
    """The reply to a call whose session ended under it (the cell ignored its interrupt, OOM, ...)."""
    if reason == KILLED_AFTER_TIMEOUT:
        message = (
            f"Code ignored the interrupt for {grace} s after its {limit} s timeout; the session was killed"
        )
    else:
        message = ENDED_MESSAGES.get(reason, f"The session ended during this call ({reason})")
    return SessionExecution(
        execution_id=execution_id,
        session_id=session_id,
        status="timeout" if reason == KILLED_AFTER_TIMEOUT else "failed",
        error={"type": reason, "message": message, "traceback": None},
        duration_ms=elapsed_ms,
    )


# -- execution records (one ConfigMap per session execution; docs/sessions.md "The audit trail") --------

LABEL_SESSION = "takovm.dev/session"
LABEL_RECORD = "takovm.dev/record"
LABEL_EXECUTION = "takovm.dev/execution"
RECORD_KIND = "session-execution"
RECORD_KEY = "record.json"
CODE_KEY = "code.py"  # the cell's code (at most CODE_MAX_CHARS: 400,000 bytes of UTF-8), for the console
RECORD_SELECTOR = f"{LABEL_RECORD}={RECORD_KIND}"
# A ConfigMap holds at most 1 MiB: the record's JSON at most this, the code at most 400,000 bytes.
RECORD_MAX_BYTES = 600_000
TRUNCATION_NOTICE = "\n[truncated: the execution record keeps {limit} bytes of each stream]\n"


def execution_id_for(session_id: str, number: int) -> str:
    """The id of a session's ``number``-th call: the same for the call and any replay of it, so a
    retried call finds (and creates nothing beside) its record."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"session-execution\x00{session_id}\x00{number}"))


def is_execution_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def record_name(session_id: str, execution_id: str) -> str:
    """The record's ConfigMap name: deterministic from the session and the execution id."""
    return f"{session_id}-x{uuid.UUID(execution_id).hex}"


def _cut(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode(errors="ignore") + TRUNCATION_NOTICE.format(limit=limit), True


def execution_record(
    session: dict[str, Any],
    execution: SessionExecution,
    *,
    started_at: datetime,
    ended_at: datetime,
    idempotency_key: str | None,
) -> ExecutionRecordFull:
    """The audit record of one session call (the shape ``GET /executions/{id}`` returns for a job), its
    streams cut with a truncation notice until its JSON fits ``RECORD_MAX_BYTES`` (a ConfigMap holds at
    most 1 MiB; escaping can make the JSON of a stream up to six times its length)."""
    budget = RECORD_MAX_BYTES // 3  # stdout, stderr, and everything else (result, message)
    while True:
        record = _record(session, execution, started_at, ended_at, idempotency_key, budget)
        if len(record.model_dump_json(exclude_none=True).encode()) <= RECORD_MAX_BYTES or budget < 1024:
            return record
        budget //= 2


def _record(
    session: dict[str, Any],
    execution: SessionExecution,
    started_at: datetime,
    ended_at: datetime,
    idempotency_key: str | None,
    budget: int,
) -> ExecutionRecordFull:
    stdout, stdout_cut = _cut(execution.stdout, budget)
    stderr, stderr_cut = _cut(execution.stderr, budget)
    result = _cut(execution.result, budget // 2)[0] if execution.result is not None else None
    error = None
    if execution.error is not None:
        message = _cut(execution.error.message, budget // 4)[0]
        error = ExecutionError(type=execution.error.type[:200], message=message)
    spec = session.get("spec") or {}
    return ExecutionRecordFull(
        execution_id=execution.execution_id,
        status=execution.status,
        job_type=str(spec.get("jobType") or "default"),
        created_at=_stamp(started_at),
        started_at=_stamp(started_at),
        ended_at=_stamp(ended_at),
        duration_ms=execution.duration_ms,
        exit_code=0 if execution.status == "succeeded" else 1,
        stdout=stdout,
        stderr=stderr,
        error=error,
        runtime="gvisor",
        session_id=execution.session_id,
        session_result=result,
        stdout_truncated=stdout_cut,
        stderr_truncated=stderr_cut,
        idempotency_key=idempotency_key,
    )


def execution_from_record(record: ExecutionRecordFull, session_id: str) -> SessionExecution:
    """A call's reply rebuilt from its audit record (the ``result`` event of a finished call's stream)."""
    error = None
    if record.error is not None:
        error = SessionError(type=record.error.type, message=record.error.message)
    status = record.status if record.status in ("succeeded", "failed", "timeout", "cancelled") else "failed"
    return SessionExecution(
        execution_id=record.execution_id,
        session_id=session_id,
        status=status,
        stdout=record.stdout,
        stderr=record.stderr,
        result=record.session_result,
        error=error,
        duration_ms=record.duration_ms,
    )


def _stamp(moment: datetime) -> str:
    """Microseconds, so two calls in one second still list newest first."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def record_configmap(
    session: dict[str, Any], tenant: str, record: ExecutionRecordFull, code: str
) -> dict[str, Any]:
    """The ConfigMap holding ``record``, owned by its PythonSession (it lives as long as the session
    object: the operator's retention of ended sessions). ``blockOwnerDeletion`` is false: the shim may
    not update PythonSession finalizers, and nothing needs to wait for a record's deletion."""
    meta = _meta(session)
    session_id = str(meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": record_name(session_id, record.execution_id),
            "namespace": str(meta.get("namespace") or ""),
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_RECORD: RECORD_KIND,
                LABEL_SESSION: session_id,
                LABEL_EXECUTION: record.execution_id,
            },
            "annotations": {SESSION_ANNOTATION_TENANT: tenant},
            "ownerReferences": [
                {
                    "apiVersion": "takovm.dev/v1alpha1",
                    "kind": "PythonSession",
                    "name": session_id,
                    "uid": str(meta.get("uid") or ""),
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": {RECORD_KEY: record.model_dump_json(exclude_none=True), CODE_KEY: code},
    }


def record_from_configmap(configmap: dict[str, Any], tenant: str) -> ExecutionRecordFull | None:
    """The record in a session-execution ConfigMap, or None when it is another tenant's (tenants may
    share a namespace) or not such a record."""
    labels = _meta(configmap).get("labels") or {}
    owner = _annotations(configmap).get(SESSION_ANNOTATION_TENANT)
    if labels.get(LABEL_RECORD) != RECORD_KIND or owner != tenant:
        return None
    raw = (configmap.get("data") or {}).get(RECORD_KEY)
    if not raw:
        return None
    try:
        return ExecutionRecordFull.model_validate_json(raw)
    except ValidationError:
        return None


def records_of(
    configmaps: list[dict[str, Any]], tenant: str, session_id: str | None, execution_id: str | None
) -> list[tuple[ExecutionRecordFull, str]]:
    """(record, code) of the tenant's records among ``configmaps`` (of one session, or with one
    execution id), checked here too: a label selector narrows the list, this decides it."""
    found = [(record_from_configmap(item, tenant), item) for item in configmaps]
    return [
        (r, str((item.get("data") or {}).get(CODE_KEY) or ""))
        for r, item in found
        if r is not None
        and (session_id is None or r.session_id == session_id)
        and (execution_id is None or r.execution_id == execution_id)
    ]


def record_selector(session_id: str | None = None, execution_id: str | None = None) -> str:
    parts = [RECORD_SELECTOR]
    if session_id:
        parts.append(f"{LABEL_SESSION}={session_id}")
    if execution_id:
        parts.append(f"{LABEL_EXECUTION}={execution_id}")
    return ",".join(parts)
