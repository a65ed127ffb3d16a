"""The operator's only module that talks to the Kubernetes API.

It wraps the official (blocking) `kubernetes` client: every public coroutine runs the call in a
worker thread of the module's own executor (`Settings.api_concurrency` threads, default
DEFAULT_API_CONCURRENCY, and as many pooled keep-alive connections), so the kopf event loop never
blocks and a burst is not limited to the default `asyncio.to_thread` pool (cpu_count + 4 threads).
Objects go in and come out as plain dicts (`_preload_content=False`, the same shape the pure builders
produce); every response is read to its end and its connection handed back to urllib3's pool, so
calls reuse keep-alive connections instead of opening (in a cluster: a TLS handshake) one per call.

Configuration: in-cluster service account when `KUBERNETES_SERVICE_HOST` is set, otherwise the
file named by `$KUBECONFIG` (read at call time, not at import time) or `~/.kube/config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kubernetes
import urllib3
from kubernetes.client import ApiException

from tako_operator.core.pods import format_time
from tako_operator.core.status import truncated_log_marker
from tako_operator.settings import DEFAULT_API_CONCURRENCY

# Lines read from the end of a container's log: the envelope frame (header, body, end marker) plus
# room for whatever the container printed after it (interpreter shutdown warnings).
LOG_TAIL_LINES = 50
ENVELOPE_LINES = 3

GROUP = "takovm.dev"
VERSION = "v1alpha1"
JOBS = "pythonjobs"
JOB_TYPES = "pythonjobtypes"

# A shared object (the namespace's runner ConfigMap) found present is not re-created for this long:
# one request per namespace and interval instead of a create answered 409 per job.
SHARED_RECHECK_SECONDS = 60.0


def _read_and_release(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """Blocking: one API call; its body read to the end and the connection back in the pool.

    With `_preload_content=False` the client returns urllib3's response unread: a response nobody
    reads keeps its connection checked out, and the next call opens a new one."""
    response = fn(*args, _preload_content=False, **kwargs)
    try:
        data: bytes = response.data or b""
    finally:
        response.release_conn()
    return data


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (also handed to kopf's own client)."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    token: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    default_namespace: str | None = None


class Kube:
    """Typed, plain-dict access to the resources the operator manages."""

    def __init__(
        self, api_client: Any, connection: Connection, concurrency: int = DEFAULT_API_CONCURRENCY
    ) -> None:
        self.api_client = api_client
        self.connection = connection
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube-api")
        self.shared_seen: dict[tuple[str, str], float] = {}  # (namespace, name) -> when found present

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    # -- generic plumbing -----------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` (blocking) in the API executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> bytes:
        """The API call `fn(*args, **kwargs)` in the API executor: the response body (connection released)."""
        data: bytes = await self._run(functools.partial(_read_and_release, fn, *args, **kwargs))
        return data

    @staticmethod
    def _json(data: bytes) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(data or b"{}")
        return parsed

    async def _create(self, fn: Any, read: Any, namespace: str, body: dict[str, Any]) -> bool:
        """Create `body`; False if it already exists (deterministic names make this idempotent).

        A 409 counts as "exists" only when it says AlreadyExists or the object can be read: any
        other 409 (a Conflict) created nothing, and is raised so that the pass is retried."""
        try:
            await self._call(fn, namespace, body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if _reason(exc) == "AlreadyExists":
                return False
            try:
                await self._call(read, body["metadata"]["name"], namespace)
            except ApiException as missing:
                if missing.status == 404:
                    raise exc from None
                raise
            return False
        return True

    async def _delete(self, fn: Any, name: str, namespace: str, **kwargs: Any) -> bool:
        try:
            await self._call(fn, name, namespace, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- owned objects --------------------------------------------------------------------------

    async def create_pod(self, pod: dict[str, Any]) -> bool:
        core = self.core
        return await self._create(
            core.create_namespaced_pod, core.read_namespaced_pod, pod["metadata"]["namespace"], pod
        )

    async def create_configmap(self, configmap: dict[str, Any]) -> bool:
        namespace = configmap["metadata"]["namespace"]
        core = self.core
        return await self._create(
            core.create_namespaced_config_map, core.read_namespaced_config_map, namespace, configmap
        )

    async def create_network_policy(self, policy: dict[str, Any]) -> bool:
        namespace = policy["metadata"]["namespace"]
        net = self.networking
        return await self._create(
            net.create_namespaced_network_policy, net.read_namespaced_network_policy, namespace, policy
        )

    async def ensure_shared_configmap(self, configmap: dict[str, Any]) -> None:
        """Create a ConfigMap every job of the namespace shares (immutable, named by its content), at
        most once per SHARED_RECHECK_SECONDS: re-sending it for every job costs a request answered 409."""
        key = (configmap["metadata"]["namespace"], configmap["metadata"]["name"])
        seen = self.shared_seen.get(key)
        if seen is not None and time.monotonic() - seen < SHARED_RECHECK_SECONDS:
            return
        await self.create_configmap(configmap)
        self.shared_seen[key] = time.monotonic()

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = await self._call(self.core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(response)

    async def read_log(self, namespace: str, pod: str, container: str, limit_bytes: int) -> str | None:
        """The end of the container's log, at most `limit_bytes` bytes; None when there is none (yet).

        The runner's result envelope is the last thing in the log, so this asks for the last
        LOG_TAIL_LINES lines, then for the last ENVELOPE_LINES (one envelope frame) if those are too
        big. If even those exceed the limit, it returns their first `limit_bytes` bytes behind
        `truncated_log_marker` (the status then names the limit). The bound holds client-side too:
        never more than `limit_bytes + 1` bytes are read off the socket, whatever the server sends."""
        data = b""
        for tail_lines in (LOG_TAIL_LINES, ENVELOPE_LINES):
            try:
                data = await self._run(self._read_log_end, namespace, pod, container, tail_lines, limit_bytes)
            except ApiException as exc:
                if exc.status in (400, 404):
                    return None
                raise
            if len(data) <= limit_bytes:
                return data.decode("utf-8", errors="replace")
        return truncated_log_marker(limit_bytes) + data[:limit_bytes].decode("utf-8", errors="replace")

    def _read_log_end(self, namespace: str, pod: str, container: str, tail_lines: int, limit: int) -> bytes:
        """Blocking: the last `tail_lines` lines of the log, at most `limit + 1` bytes of them."""
        response: Any = self.core.read_namespaced_pod_log(
            pod,
            namespace,
            container=container,
            tail_lines=tail_lines,
            limit_bytes=limit + 1,
            _preload_content=False,
        )
        try:
            data: bytes = response.read(limit + 1) or b""
        finally:
            response.close()  # drops the connection if the server sent more than asked
        return data

    async def remove_pod_label(self, namespace: str, pod: str, label: str) -> bool:
        try:
            await self._call(
                self.core.patch_namespaced_pod,
                pod,
                namespace,
                body={"metadata": {"labels": {label: None}}},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_pod(self, namespace: str, name: str) -> bool:
        return await self._delete(self.core.delete_namespaced_pod, name, namespace, grace_period_seconds=0)

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Pods carrying every label in `labels` (also filtered here: emulators ignore selectors)."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        response = await self._call(self.core.list_namespaced_pod, namespace, label_selector=selector)
        items: list[dict[str, Any]] = self._json(response).get("items") or []
        return [
            pod
            for pod in items
            if labels.items() <= ((pod.get("metadata") or {}).get("labels") or {}).items()
        ]

    async def merge_patch_pod(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """JSON merge patch (lists are replaced, None deletes a key); a `metadata.resourceVersion` in
        the patch is a precondition. None when the Pod is gone (404) or changed meanwhile (409)."""
        try:
            response = await self._call(
                self.core.patch_namespaced_pod,
                name,
                namespace,
                body=patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        return self._json(response)

    async def delete_configmap(self, namespace: str, name: str) -> bool:
        return await self._delete(self.core.delete_namespaced_config_map, name, namespace)

    async def delete_network_policy(self, namespace: str, name: str) -> bool:
        return await self._delete(self.networking.delete_namespaced_network_policy, name, namespace)

    # -- PythonJob / PythonJobType ----------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = await self._call(
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                JOBS,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(response)

    async def get_job_type(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = await self._call(
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                JOB_TYPES,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(response)

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's ``data`` (base64 values as stored), or None if it does not exist (completion
        webhooks: the chart's RBAC allows ``get`` on exactly this one Secret)."""
        try:
            response = await self._call(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, str] = self._json(response).get("data") or {}
        return data

    async def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `status` into the job's status; the job as stored after the patch (None: it is gone)."""
        return await self._patch_job(namespace, name, {"status": status}, status=True)

    async def patch_job_type_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        try:
            await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                JOB_TYPES,
                name,
                {"status": status},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_job_metadata(
        self, namespace: str, name: str, metadata: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `metadata` into the job's metadata; the job as stored after the patch (None: it is gone)."""
        return await self._patch_job(namespace, name, {"metadata": metadata}, status=False)

    async def _patch_job(
        self, namespace: str, name: str, body: dict[str, Any], status: bool
    ) -> dict[str, Any] | None:
        custom = self.custom
        fn = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        try:
            response = await self._call(fn, GROUP, VERSION, namespace, JOBS, name, body)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(response)

    async def delete_job(self, namespace: str, name: str) -> bool:
        try:
            await self._call(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                JOBS,
                name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- events -----------------------------------------------------------------------------------

    async def emit_event(
        self, obj: dict[str, Any], reason: str, message: str, type_: str = "Normal", kind: str = "PythonJob"
    ) -> None:
        """A core/v1 Event on ``obj``, a PythonJob unless ``kind`` says otherwise; failures are not fatal."""
        meta = obj["metadata"]
        now = format_time(datetime.datetime.now(datetime.UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "tako-vm-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiException):
            await self._call(self.core.create_namespaced_event, meta["namespace"], body=event)

    # -- leader election (coordination.k8s.io/v1 Lease, see leader.py) ---------------------------
    # Bounded by `request_timeout` seconds each: an unreachable API server must not hold up the election.

    async def get_lease(self, namespace: str, name: str, request_timeout: float) -> dict[str, Any] | None:
        api = kubernetes.client.CoordinationV1Api(self.api_client)
        try:
            response = await self._call(
                api.read_namespaced_lease,
                name,
                namespace,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(response)

    async def write_lease(self, namespace: str, body: dict[str, Any], request_timeout: float) -> bool:
        """Create the Lease (no resourceVersion in `body`), or merge-patch it with the resourceVersion it
        was read at, which the API server checks as a precondition. False when someone else created or
        changed it first (409)."""
        api = kubernetes.client.CoordinationV1Api(self.api_client)
        name = body["metadata"]["name"]
        try:
            if body["metadata"].get("resourceVersion"):
                await self._call(
                    api.patch_namespaced_lease,
                    name,
                    namespace,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=request_timeout,
                )
            else:
                await self._call(
                    api.create_namespaced_lease,
                    namespace,
                    body,
                    _request_timeout=request_timeout,
                )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True


# Statuses worth retrying the same pass for: a request timeout, a Conflict, rate limiting, and every
# server-side error (an overloaded or restarting API server, an etcd timeout).
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def retryable(exc: BaseException) -> bool:
    """Whether `exc`, raised by a call in this module, is a transient API fault (retry the pass later)
    rather than a request the API server will always refuse."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        return status in RETRYABLE_STATUSES or status >= 500 or status == 0
    # urllib3's connection errors (refused, reset, read timeout) and plain socket errors
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError)


def _reason(exc: ApiException) -> str | None:
    """The `reason` of the Kubernetes Status in an error response, if there is one."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return None
    return body.get("reason") if isinstance(body, dict) else None


def load_connection(
    kubeconfig: str | None = None, concurrency: int = DEFAULT_API_CONCURRENCY
) -> tuple[Any, Connection]:
    """Build an API client: in-cluster config if available, else `kubeconfig` or `$KUBECONFIG`;
    `concurrency` pooled keep-alive connections."""
    configuration = kubernetes.client.Configuration()
    configuration.connection_pool_maxsize = concurrency
    namespace: str | None = None
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        if os.path.exists(ns_file):
            with open(ns_file) as fh:
                namespace = fh.read().strip()
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        path = path.split(os.pathsep)[0]
        kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)
        _contexts, active = kubernetes.config.list_kube_config_contexts(config_file=path)
        namespace = (active or {}).get("context", {}).get("namespace")
    token: str | None = None
    auth = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    if auth:
        token = auth.removeprefix("Bearer ").strip()
    connection = Connection(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token,
        cert_path=configuration.cert_file,
        key_path=configuration.key_file,
        default_namespace=namespace,
    )
    return kubernetes.client.ApiClient(configuration), connection


def connect(kubeconfig: str | None = None, concurrency: int = DEFAULT_API_CONCURRENCY) -> Kube:
    """A Kube with `concurrency` (Settings.api_concurrency) calls in flight at most."""
    api_client, connection = load_connection(kubeconfig, concurrency)
    return Kube(api_client, connection, concurrency)
