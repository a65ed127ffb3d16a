"""The operator's only module that talks to the Kubernetes API: a small async REST client on aiohttp.

One `aiohttp.ClientSession` per Kube, created on the first call inside the running loop, with a pooled
keep-alive connector of `Settings.api_concurrency` connections (default DEFAULT_API_CONCURRENCY): at
most that many calls are in flight, the rest wait for a free connection. No threads, no `kubernetes`
client (its ~1,000 modules cost ~38 MiB of RSS). Objects go in and come out as plain dicts, the same
shape the pure builders produce. Every error leaves this module as `KubeApiError` (an HTTP error
status, or status 0 for a connection fault or timeout); `retryable` tells transient ones apart.

Configuration: `tako_vm.kubeconfig` (shared with the shim): in-cluster service account, or the
kubeconfig (`$KUBECONFIG`, every file of the list, or `~/.kube/config`) with a token, tokenFile, exec
credential plugin or client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from tako_operator.core.pods import format_time
from tako_operator.core.status import truncated_log_marker
from tako_operator.settings import DEFAULT_API_CONCURRENCY
from tako_vm.kubeconfig import BearerToken, Connection, KubeApiError, load_connection

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

# Per request: the TCP (+TLS) connect, and the wait for each read off the socket. Waiting for a free
# pooled connection is not bounded (a burst queues there, as it queued for the old client's threads).
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(
    total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS
)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def _path(group: str, version: str, namespace: str, plural: str, name: str | None = None) -> str:
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def _core(namespace: str, plural: str, name: str | None = None) -> str:
    return _path("", "v1", namespace, plural, name)


def _net(namespace: str, name: str | None = None) -> str:
    return _path("networking.k8s.io", "v1", namespace, "networkpolicies", name)


def _lease(namespace: str, name: str | None = None) -> str:
    return _path("coordination.k8s.io", "v1", namespace, "leases", name)


class Kube:
    """Typed, plain-dict access to the resources the operator manages."""

    def __init__(self, connection: Connection, concurrency: int = DEFAULT_API_CONCURRENCY) -> None:
        self.connection = connection
        self.concurrency = concurrency
        self.server = connection.server.rstrip("/")
        self.token = BearerToken(connection)
        # built now: a bad certificate or key file fails at start-up, not at the first call
        self.tls: ssl.SSLContext | bool = (
            connection.ssl_context() if self.server.startswith("https:") else True
        )
        self.session: aiohttp.ClientSession | None = None
        self.shared_seen: dict[tuple[str, str], float] = {}  # (namespace, name) -> when found present

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- generic plumbing -----------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency, limit_per_host=self.concurrency, ssl=self.tls
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=DEFAULT_TIMEOUT,
                headers={"Accept": "application/json", "User-Agent": "tako-vm-operator"},
            )
        return self.session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str | int] | None = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
        limit: int | None = None,
    ) -> bytes:
        """One API call: the response body (at most `limit` bytes of it when given). Raises
        KubeApiError for an error status, a connection fault or a timeout (status 0)."""
        headers = {}
        if self.token.due():  # an exec credential plugin runs for seconds: not on the event loop
            await asyncio.to_thread(self.token.get)
        token = self.token.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        timeout = DEFAULT_TIMEOUT if request_timeout is None else aiohttp.ClientTimeout(total=request_timeout)
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        try:
            async with self._session().request(
                method,
                self.server + path,
                data=data,
                params=params,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise _api_error(response.status, response.reason, await response.read())
                if limit is None:
                    return await response.read()
                chunks = bytearray()
                while len(chunks) < limit and not response.content.at_eof():
                    chunks += await response.content.read(limit - len(chunks))
                if not response.content.at_eof():
                    response.close()  # the server sent more than asked: drop this connection
                return bytes(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(0, type(exc).__name__, str(exc) or repr(exc)) from exc

    async def _json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(await self.request(method, path, body, **kwargs) or b"{}")
        return parsed

    async def _get_or_none(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return await self._json("GET", path, **kwargs)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _create(self, collection: str, body: dict[str, Any]) -> bool:
        """Create `body`; False if it already exists (deterministic names make this idempotent).

        A 409 counts as "exists" only when it says AlreadyExists or the object can be read: any
        other 409 (a Conflict) created nothing, and is raised so that the pass is retried."""
        try:
            await self.request("POST", collection, body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            if exc.reason == "AlreadyExists":
                return False
            if await self._get_or_none(f"{collection}/{quote(body['metadata']['name'], safe='')}") is None:
                raise exc from None
            return False
        return True

    async def _delete(self, path: str, params: Mapping[str, str | int] | None = None) -> bool:
        """DELETE `path`; False if it was already gone."""
        try:
            await self.request("DELETE", path, params=params)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _patch(
        self, path: str, patch: dict[str, Any], content_type: str = MERGE_PATCH
    ) -> dict[str, Any] | None:
        """PATCH `path`; the object as stored after it, None when it is gone (404)."""
        try:
            return await self._json("PATCH", path, patch, content_type=content_type)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- custom resources (takovm.dev) ------------------------------------------------------------

    async def get_custom(self, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(_path(GROUP, VERSION, namespace, plural, name))

    async def patch_custom(
        self, namespace: str, plural: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        """JSON merge patch of the object (or of its status subresource); None when it is gone."""
        path = _path(GROUP, VERSION, namespace, plural, name) + ("/status" if status else "")
        return await self._patch(path, patch)

    async def delete_custom(self, namespace: str, plural: str, name: str) -> bool:
        return await self._delete(_path(GROUP, VERSION, namespace, plural, name))

    # -- owned objects --------------------------------------------------------------------------

    async def create_pod(self, pod: dict[str, Any]) -> bool:
        return await self._create(_core(pod["metadata"]["namespace"], "pods"), pod)

    async def create_configmap(self, configmap: dict[str, Any]) -> bool:
        return await self._create(_core(configmap["metadata"]["namespace"], "configmaps"), configmap)

    async def create_network_policy(self, policy: dict[str, Any]) -> bool:
        return await self._create(_net(policy["metadata"]["namespace"]), policy)

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
        return await self._get_or_none(_core(namespace, "pods", name))

    async def read_log(self, namespace: str, pod: str, container: str, limit_bytes: int) -> str | None:
        """The end of the container's log, at most `limit_bytes` bytes; None when there is none (yet).

        The runner's result envelope is the last thing in the log, so this asks for the last
        LOG_TAIL_LINES lines, then for the last ENVELOPE_LINES (one envelope frame) if those are too
        big. If even those exceed the limit, it returns their first `limit_bytes` bytes behind
        `truncated_log_marker` (the status then names the limit). The bound holds client-side too:
        never more than `limit_bytes + 1` bytes are read off the socket, whatever the server sends."""
        data = b""
        for tail_lines in (LOG_TAIL_LINES, ENVELOPE_LINES):
            params: dict[str, str | int] = {
                "container": container,
                "tailLines": tail_lines,
                "limitBytes": limit_bytes + 1,
            }
            try:
                data = await self.request(
                    "GET", _core(namespace, "pods", pod) + "/log", params=params, limit=limit_bytes + 1
                )
            except KubeApiError as exc:
                if exc.status in (400, 404):
                    return None
                raise
            if len(data) <= limit_bytes:
                return data.decode("utf-8", errors="replace")
        return truncated_log_marker(limit_bytes) + data[:limit_bytes].decode("utf-8", errors="replace")

    async def remove_pod_label(self, namespace: str, pod: str, label: str) -> bool:
        patch = {"metadata": {"labels": {label: None}}}
        return await self._patch(_core(namespace, "pods", pod), patch, STRATEGIC_MERGE_PATCH) is not None

    async def delete_pod(self, namespace: str, name: str) -> bool:
        return await self._delete(_core(namespace, "pods", name), {"gracePeriodSeconds": 0})

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Pods carrying every label in `labels` (also filtered here: emulators ignore selectors)."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        answer = await self._json("GET", _core(namespace, "pods"), params={"labelSelector": selector})
        items: list[dict[str, Any]] = answer.get("items") or []
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
            return await self._patch(_core(namespace, "pods", name), patch)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def delete_configmap(self, namespace: str, name: str) -> bool:
        return await self._delete(_core(namespace, "configmaps", name))

    async def delete_network_policy(self, namespace: str, name: str) -> bool:
        return await self._delete(_net(namespace, name))

    # -- PythonJob / PythonJobType ----------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(namespace, JOBS, name)

    async def get_job_type(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_custom(namespace, JOB_TYPES, name)

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's ``data`` (base64 values as stored), or None if it does not exist (completion
        webhooks: the chart's RBAC allows ``get`` on exactly this one Secret)."""
        secret = await self._get_or_none(_core(namespace, "secrets", name))
        if secret is None:
            return None
        data: dict[str, str] = secret.get("data") or {}
        return data

    async def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `status` into the job's status; the job as stored after the patch (None: it is gone)."""
        return await self.patch_custom(namespace, JOBS, name, {"status": status}, status=True)

    async def patch_job_type_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        patched = await self.patch_custom(namespace, JOB_TYPES, name, {"status": status}, status=True)
        return patched is not None

    async def patch_job_metadata(
        self, namespace: str, name: str, metadata: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `metadata` into the job's metadata; the job as stored after the patch (None: it is gone)."""
        return await self.patch_custom(namespace, JOBS, name, {"metadata": metadata})

    async def delete_job(self, namespace: str, name: str) -> bool:
        return await self.delete_custom(namespace, JOBS, name)

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
        with contextlib.suppress(KubeApiError):
            await self.request("POST", _core(meta["namespace"], "events"), event)

    # -- leader election (coordination.k8s.io/v1 Lease, see leader.py) ---------------------------
    # Bounded by `request_timeout` seconds each: an unreachable API server must not hold up the election.

    async def get_lease(self, namespace: str, name: str, request_timeout: float) -> dict[str, Any] | None:
        return await self._get_or_none(_lease(namespace, name), request_timeout=request_timeout)

    async def write_lease(self, namespace: str, body: dict[str, Any], request_timeout: float) -> bool:
        """Create the Lease (no resourceVersion in `body`), or merge-patch it with the resourceVersion it
        was read at, which the API server checks as a precondition. False when someone else created or
        changed it first (409)."""
        try:
            if body["metadata"].get("resourceVersion"):
                path = _lease(namespace, body["metadata"]["name"])
                await self.request(
                    "PATCH", path, body, content_type=MERGE_PATCH, request_timeout=request_timeout
                )
            else:
                await self.request("POST", _lease(namespace), body, request_timeout=request_timeout)
        except KubeApiError as exc:
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
    if isinstance(exc, KubeApiError):
        return exc.status in RETRYABLE_STATUSES or exc.status >= 500 or exc.status == 0
    # connection faults are KubeApiError(0, ...) once through `Kube.request`; these are the raw ones
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


def _api_error(status: int, http_reason: str | None, body: bytes) -> KubeApiError:
    """The KubeApiError for an error answer, from its Kubernetes Status body when it has one."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {}
    reason = parsed.get("reason") or http_reason or ""
    message = parsed.get("message") or body[:500].decode("utf-8", errors="replace")
    return KubeApiError(status, str(reason), str(message))


def connect(kubeconfig: str | None = None, concurrency: int = DEFAULT_API_CONCURRENCY) -> Kube:
    """A Kube with `concurrency` (Settings.api_concurrency) calls in flight at most."""
    return Kube(load_connection(kubeconfig), concurrency)
