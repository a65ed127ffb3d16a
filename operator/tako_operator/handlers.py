"""kopf wiring, and nothing else: each handler hands its event to the Reconciler (reconciler.py)
or the standby pool in a few lines. One registry per operator instance (`register`)."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from tako_operator.core import standby as standby_mod
from tako_operator.core.admission import Entry, Key, entry_for
from tako_operator.core.jobcache import slim_pod
from tako_operator.core.sessions import LABEL_SESSION
from tako_operator.io.kube import GROUP, JOB_TYPES, JOBS, VERSION
from tako_operator.reconciler import INDEX_KEY, JOB_INDEX, POD_INDEX, TYPE_INDEX, Reconciler
from tako_operator.sessions import SESSIONS, SessionReconciler, owner_session


def _owned_by_job(body: kopf.Body, **_: Any) -> bool:
    owners = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "PythonJob" and o.get("apiVersion") == f"{GROUP}/{VERSION}" for o in owners)


def _job_owner(body: kopf.Body) -> str | None:
    for owner in (body.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "PythonJob":
            return str(owner.get("name"))
    return None


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Attach the handlers to `registry` (one registry per operator instance)."""

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        c = reconciler.kube.connection
        # a rotated service account token, or an exec plugin's fresh one, on every re-login; kopf
        # logs in again by itself once an exec token's expiration has passed
        token, expiration = c.current_credentials()
        return kopf.ConnectionInfo(
            server=c.server,
            ca_path=c.ca_path,
            insecure=c.insecure,
            token=token,
            expiration=expiration,
            certificate_path=c.cert_path,
            private_key_path=c.key_path,
            default_namespace=c.default_namespace,
        )

    # Index handlers are coroutines on purpose: kopf runs a plain function in its thread pool, one
    # thread hop per watch event and index (profiled: ~20% of the event loop under a burst, mostly
    # handing work to threads and taking the GIL back). These are cheap, non-blocking dict builds.
    @kopf.index(GROUP, VERSION, JOBS, id=JOB_INDEX, registry=registry)
    async def tako_jobs(body: kopf.Body, **_: Any) -> dict[str, Entry]:
        return {INDEX_KEY: entry_for(dict(body))}

    @kopf.index("v1", "pods", id=POD_INDEX, when=_owned_by_job, registry=registry)
    async def tako_pods(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[Key, dict[str, Any]]:
        return {(namespace or "", name): slim_pod(body)}

    @kopf.index(GROUP, VERSION, JOB_TYPES, id=TYPE_INDEX, registry=registry)
    async def tako_job_types(
        body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> dict[Key, dict[str, Any]]:
        return {(namespace or "", name): copy.deepcopy(dict(body))}

    @kopf.on.event(GROUP, VERSION, JOBS, id="job_event", registry=registry)
    async def job_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        reconciler.bind_indexes(kwargs)
        await reconciler.on_job_event(type, copy.deepcopy(dict(body)))

    @kopf.on.event(GROUP, VERSION, JOB_TYPES, id="job_type_event", registry=registry)
    async def job_type_event(type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        spec = None if type == "DELETED" else dict(body.get("spec") or {})
        uid = (body.get("metadata") or {}).get("uid")
        reconciler.pool.refill_soon(namespace or "", name, spec, uid)
        if type != "DELETED":
            await reconciler.pool.report(namespace or "", name, copy.deepcopy(dict(body)))

    standby_labels = {standby_mod.LABEL_POOL: kopf.PRESENT}

    @kopf.on.event("v1", "pods", id="standby_event", labels=standby_labels, registry=registry)
    async def standby_event(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
        reconciler.bind_indexes(kwargs)
        await reconciler.on_standby_event(namespace or "", body)

    @kopf.on.event("v1", "pods", id="pod_event", when=_owned_by_job, registry=registry)
    async def pod_event(body: kopf.Body, namespace: str | None, **kwargs: Any) -> None:
        reconciler.bind_indexes(kwargs)
        owner = _job_owner(body)
        if owner is not None and namespace:
            await reconciler.poke(namespace, owner)

    register_sessions(registry, reconciler)


def register_sessions(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """PythonSessions (docs/sessions.md): each event of a session or of its Pod is one pass of the
    SessionReconciler (made on first use, sharing the Reconciler's API client and settings)."""
    made: list[SessionReconciler] = []

    def sessions() -> SessionReconciler:
        if not made:
            made.append(SessionReconciler(reconciler.kube, reconciler.config))
        return made[0]

    @kopf.on.event(GROUP, VERSION, SESSIONS, id="session_event", registry=registry)
    async def session_event(type: str, body: kopf.Body, **_: Any) -> None:
        await sessions().on_event(type, copy.deepcopy(dict(body)))

    @kopf.on.event(
        "v1", "pods", id="session_pod_event", labels={LABEL_SESSION: kopf.PRESENT}, registry=registry
    )
    async def session_pod_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        owner = owner_session(dict(body))
        if owner is not None and namespace:
            await sessions().reconcile((namespace, owner))
