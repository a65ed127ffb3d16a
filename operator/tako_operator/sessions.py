"""The SessionReconciler: carries out ``core.sessions.plan_session`` for PythonSessions (one pass per
session, serialised per session). Triggers (handlers.py): every PythonSession watch event, every event
of a session Pod, and the wake-ups the plan asks for (TTL, idle timeout, startup deadline, retention).

Sessions are few and long-lived, so a pass reads its Pod from the API (no index): what it
decides never rests on a watch that lags behind the objects it just created."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from tako_operator.core import objects
from tako_operator.core import sessions as core
from tako_operator.core.builders import INSTALL_CONTAINER as INSTALL
from tako_operator.core.builders import LABEL_EGRESS as EGRESS_LABEL
from tako_operator.io import detached
from tako_operator.io.kube import Kube, retryable
from tako_operator.io.sessions import SESSIONS, SessionApi
from tako_operator.reconciler import api_retry_delay
from tako_operator.settings import Settings

log = logging.getLogger("tako_operator.sessions")
__all__ = ["SESSIONS", "SessionReconciler", "owner_session"]
Key = tuple[str, str]


class SessionReconciler:
    def __init__(self, kube: Kube, config: Settings) -> None:
        self.kube = kube
        self.api = SessionApi(kube)
        self.config = config
        self.locks: dict[Key, asyncio.Lock] = {}
        self.wakeups: dict[Key, asyncio.TimerHandle] = {}
        self.failures: dict[Key, int] = {}

    async def on_event(self, event_type: str | None, session: dict[str, Any]) -> None:
        meta = session.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            await self.forget(key)
            return
        await self.reconcile(key)

    async def reconcile(self, key: Key) -> None:
        lock = self.locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                await self._pass(key)
        except Exception as exc:
            if not retryable(exc):
                raise
            failures = self.failures[key] = self.failures.get(key, 0) + 1
            delay = api_retry_delay(self.config, failures)
            log.warning("session %s/%s: transient API error (%r); again in %.1f s", *key, exc, delay)
            self.schedule(key, delay)
            return
        self.failures.pop(key, None)

    async def _pass(self, key: Key) -> None:
        namespace, name = key
        session = await self.api.get_session(namespace, name)
        if session is None or (session.get("metadata") or {}).get("deletionTimestamp"):
            return
        pod = await self.kube.get_pod(namespace, core.pod_name(name))
        type_name = objects.job_type_name(session)
        found = await self.kube.get_job_type(namespace, type_name)
        job_type = objects.resolve_job_type(type_name, found, self.config.default_image)
        install_log = None
        if core.install_pending(pod):
            assert pod is not None
            limit = self.config.pods.log_limit_bytes
            install_log = await self.kube.read_log(namespace, pod["metadata"]["name"], INSTALL, limit)
        result = core.plan_session(
            session,
            pod=pod,
            job_type=job_type,
            settings=self.config.pods,
            sessions=self.config.sessions,
            now=datetime.datetime.now(datetime.UTC),
            install_log=install_log,
        )
        for obj in result.create:
            await self.create(obj)
        if result.status:
            await self.api.patch_session_status(namespace, name, result.status)
        if result.remove_egress:
            await self.kube.remove_pod_label(namespace, core.pod_name(name), EGRESS_LABEL)
            await self.kube.delete_network_policy(namespace, core.install_policy_name(name))
        if result.delete_pod:
            await self.kube.delete_pod(namespace, result.delete_pod)
        if result.cleanup:
            await self.cleanup(key)
        for event_type, reason, message in result.events:
            await self.api.emit_event(session, reason, message, event_type)
        if result.delete_session:
            await self.api.delete_session(namespace, name)
        elif result.requeue_after is not None:
            self.schedule(key, result.requeue_after)

    async def create(self, obj: dict[str, Any]) -> None:
        kind = obj["kind"]
        if kind == "ConfigMap" and obj["metadata"]["name"] == core.session_configmap_name():
            await self.kube.ensure_shared_configmap(obj)
        elif kind == "ConfigMap":  # the session's own install config
            await self.kube.create_configmap(obj)
        elif kind == "NetworkPolicy":
            await self.kube.create_network_policy(obj)
        elif kind == "Pod":
            await self.kube.create_pod(obj)
        else:
            raise ValueError(f"unexpected object kind {kind!r} from the session builders")

    async def cleanup(self, key: Key) -> None:
        namespace, name = key
        await self.kube.delete_network_policy(namespace, core.policy_name(name))
        await self.kube.delete_network_policy(namespace, core.install_policy_name(name))
        await self.kube.delete_configmap(namespace, core.install_configmap_name(name))

    async def forget(self, key: Key) -> None:
        """``kubectl delete pysession``: owner references remove the rest on a real cluster; doing it
        here too frees the sandbox at once (and covers emulators without garbage collection)."""
        await self.kube.delete_pod(key[0], core.pod_name(key[1]))
        await self.cleanup(key)
        handle = self.wakeups.pop(key, None)
        if handle is not None:
            handle.cancel()
        self.locks.pop(key, None)
        self.failures.pop(key, None)

    def schedule(self, key: Key, delay: float) -> None:
        old = self.wakeups.pop(key, None)
        if old is not None:
            old.cancel()
        self.wakeups[key] = detached.call_later(max(delay, 0.05), self._spawn, key)

    def _spawn(self, key: Key) -> None:
        self.wakeups.pop(key, None)
        task = detached.spawn(self.reconcile(key))
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("session reconcile failed: %r", task.exception(), exc_info=task.exception())


def owner_session(pod: dict[str, Any]) -> str | None:
    """The PythonSession that owns a session Pod."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "PythonSession":
            return str(owner.get("name"))
    return None
