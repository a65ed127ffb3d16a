"""The shim's only module that talks to the Kubernetes API.

Requests go through ``aiohttp`` (natively async, so a watch stream is cancellable and never holds a
thread). The configuration is read once, in a worker thread, by ``tako_vm.kubeconfig`` (shared with the
operator): in-cluster service account (``in_cluster``, or ``KUBERNETES_SERVICE_HOST`` set and no
kubeconfig given), else the kubeconfig named by the ``kubeconfig`` option or ``$KUBECONFIG`` (every file
of the list, read at start, not import), else ``~/.kube/config``. Its ``BearerToken`` (a rotated
service-account token, an exec credential plugin's token before it expires) is asked for the
``Authorization`` header on every request.

Objects go in and come out as plain dicts. Errors are ``KubeApiError`` with the API's status code.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from tako_shim.config import KubernetesOptions
from tako_vm import kubeconfig
from tako_vm.kubeconfig import KubeApiError

JOBS_PATH = "/apis/takovm.dev/v1alpha1/namespaces/{namespace}/pythonjobs"
JOB_TYPES_PATH = "/apis/takovm.dev/v1alpha1/namespaces/{namespace}/pythonjobtypes"
LIST_CHUNK = 500
WATCH_SERVER_TIMEOUT_SECONDS = 290
REQUEST_TIMEOUT_SECONDS = 30
WATCH_OPENED = "OPENED"  # the synthetic first event of a watch stream the API accepted


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True)
class Connection:
    server: str
    ssl: ssl.SSLContext | bool
    token: kubeconfig.BearerToken

    def authorization(self) -> str | None:
        value = self.token.get()
        return f"Bearer {value}" if value else None


def _load_connection(options: KubernetesOptions) -> Connection:
    """Blocking: the in-cluster or kubeconfig credentials (``tako_vm.kubeconfig``)."""
    loaded = kubeconfig.load_connection(options.kubeconfig, in_cluster=options.in_cluster)
    context = loaded.ssl_context() if loaded.server.startswith("https") else False
    return Connection(loaded.server.rstrip("/"), context, kubeconfig.BearerToken(loaded))


class KubeApi:
    """Typed, plain-dict access to PythonJobs and (read only) PythonJobTypes: what the shim's Role allows."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
            headers={"Accept": "application/json", "User-Agent": "tako-shim"},
        )

    @classmethod
    async def connect(cls, options: KubernetesOptions) -> KubeApi:
        return cls(await asyncio.to_thread(_load_connection, options))

    async def close(self) -> None:
        await self._session.close()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.connection.token.due():  # an exec credential plugin runs for seconds: not on the loop
            await asyncio.to_thread(self.connection.token.get)
        auth = self.connection.authorization()
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            async with self._session.request(
                method,
                self.connection.server + path,
                params=params,
                data=json.dumps(body) if body is not None else None,
                headers=await self._headers(content_type if body is not None else None),
                ssl=self.connection.ssl,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _api_error(response.status, text)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from None
        data: dict[str, Any] = json.loads(text) if text else {}
        return data

    @staticmethod
    def _jobs(namespace: str, name: str | None = None, template: str = JOBS_PATH) -> str:
        path = template.format(namespace=quote(namespace, safe=""))
        return f"{path}/{quote(name, safe='')}" if name else path

    # -- PythonJobs -------------------------------------------------------------------------------

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create; ``KubeApiError(409)`` when the name is taken."""
        return await self._request("POST", self._jobs(namespace), body=body)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", self._jobs(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch; ``None`` if the job is gone."""
        try:
            return await self._request(
                "PATCH",
                self._jobs(namespace, name),
                body=patch,
                content_type="application/merge-patch+json",
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_jobs(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every PythonJob in ``namespace`` matching the selector."""
        return await self.list_objects(JOBS_PATH, namespace, label_selector)

    async def list_objects(
        self, template: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object at ``template`` in ``namespace`` matching the selector, in chunks
        (``limit``/``continue``)."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": str(LIST_CHUNK)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self._request("GET", self._jobs(namespace, template=template), params=params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = str(token)

    # -- PythonJobTypes (get/list only) -------------------------------------------------------------

    async def get_job_type(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", self._jobs(namespace, name, JOB_TYPES_PATH))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_job_types(self, namespace: str) -> list[dict[str, Any]]:
        page = await self._request("GET", self._jobs(namespace, template=JOB_TYPES_PATH))
        return list(page.get("items") or [])

    async def watch_jobs(self, namespace: str, resource_version: str | None) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) until the server ends the stream.

        Without ``resource_version`` the server first sends every existing job as ``ADDED`` (the
        list part of list-then-watch). The first item is ``{"type": "OPENED"}`` once the API answered
        200 (so the caller knows the watch is up even in an empty namespace). Raises
        ``WatchExpired`` on 410 Gone, ``KubeApiError`` otherwise.
        """
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SERVER_TIMEOUT_SECONDS),
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        try:
            async with self._session.get(
                self.connection.server + self._jobs(namespace),
                params=params,
                headers=await self._headers(),
                ssl=self.connection.ssl,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=WATCH_SERVER_TIMEOUT_SECONDS + 30),
            ) as response:
                if response.status == 410:
                    raise WatchExpired(await response.text())
                if response.status >= 400:
                    raise _api_error(response.status, await response.text())
                yield {"type": WATCH_OPENED}
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield _watch_event(line)
                if buffer.strip():
                    yield _watch_event(buffer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from None

    async def follow_pod_log(self, namespace: str, pod: str, container: str) -> AsyncIterator[bytes]:
        """The container's log from its start, chunk by chunk, until the container ends (``follow``)."""
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/log"
        try:
            async with self._session.get(
                self.connection.server + path,
                params={"container": container, "follow": "true"},
                headers=await self._headers(),
                ssl=self.connection.ssl,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=WATCH_SERVER_TIMEOUT_SECONDS),
            ) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.text())
                async for chunk in response.content.iter_any():
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from None


def _watch_event(line: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        if status.get("code") == 410:
            raise WatchExpired(str(status.get("message") or "resourceVersion too old"))
        raise KubeApiError(int(status.get("code") or 500), "WatchError", str(status.get("message") or event))
    return event


def _api_error(status: int, text: str) -> KubeApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return KubeApiError(status, str(body.get("reason") or status), str(body.get("message") or text[:500]))
