"""A Kubernetes API emulator for integration tests, shared by every helper that needs a cluster.

`KubeHarness` runs kmock's `KubernetesEmulator` on 127.0.0.1 in its own thread and event loop, so
tests, the operator (kopf) and the node agent can all talk to it over real HTTP from any thread.

What it adds on top of kmock (each one emulates an API-server behaviour kmock lacks, and says so):
- `metadata.generateName` is honoured on create (kmock would key every such object by name None);
- every resource the product uses is declared watchable, including the backbone resources kopf
  needs (CRDs, namespaces, events), or kopf waits silently forever;
- on create, the emulator fills `metadata.uid`, `creationTimestamp` and `generation` like the
  API server does (kmock stores the body verbatim);
- `GET pods/{name}/log?container=...` serves text that a test or the node agent stored with
  `set_log()` (kmock has no kubelet and would answer the Pod JSON);
- `kubeconfig()` writes a kubeconfig file pointing at the emulator;
- a write to an object's `spec` (not through a subresource) increments `metadata.generation`, as the
  API server does (kstatus, Argo CD and `kubectl wait` compare it with `observedGeneration`);
- `authorize(fn)` puts an RBAC check in front of every request but the test's own (403 when `fn`
  says no; tests/integration/chart_support.py's Enforcer checks the chart's rendered Roles);
- Leases get the API server's optimistic concurrency: every write bumps `metadata.resourceVersion`,
  and a patch naming a resourceVersion that is not the stored one is answered 409 Conflict (leader
  election is a compare-and-swap on it; kmock would apply both writes).

What it cannot emulate (tested elsewhere): resourceVersion (except for Leases), schema validation,
label selectors, status-subresource separation and garbage collection of owned objects.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import kmock
from kmock._internal import enums, rendering

VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]
NAMESPACE = "tako-test"

# (api path prefix, plural, kind, namespaced, subresources)
RESOURCES: list[tuple[str, str, str, bool, list[str]]] = [
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, []),
    ("v1", "namespaces", "Namespace", False, []),
    ("v1", "events", "Event", True, []),
    ("events.k8s.io/v1", "events", "Event", True, []),
    ("v1", "pods", "Pod", True, ["log", "status", "eviction"]),
    ("v1", "configmaps", "ConfigMap", True, []),
    ("v1", "secrets", "Secret", True, []),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True, []),
    ("coordination.k8s.io/v1", "leases", "Lease", True, []),
    ("takovm.dev/v1alpha1", "pythonjobs", "PythonJob", True, ["status"]),
    ("takovm.dev/v1alpha1", "pythonjobtypes", "PythonJobType", True, ["status"]),
    ("takovm.dev/v1alpha1", "pythonsessions", "PythonSession", True, ["status"]),
    ("kopf.dev/v1", "kopfpeerings", "KopfPeering", True, []),
    ("kopf.dev/v1", "clusterkopfpeerings", "ClusterKopfPeering", False, []),
]

# Resource paths for the client helpers: short name -> (api base, plural).
PATHS: dict[str, tuple[str, str]] = {
    "pods": ("/api/v1", "pods"),
    "configmaps": ("/api/v1", "configmaps"),
    "secrets": ("/api/v1", "secrets"),
    "events": ("/api/v1", "events"),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "pythonjobs": ("/apis/takovm.dev/v1alpha1", "pythonjobs"),
    "pythonjobtypes": ("/apis/takovm.dev/v1alpha1", "pythonjobtypes"),
    "pythonsessions": ("/apis/takovm.dev/v1alpha1", "pythonsessions"),
    "kopfpeerings": ("/apis/kopf.dev/v1", "kopfpeerings"),
}


# The request the current task is serving (each aiohttp request runs in its own task/context).
_SERVING: contextvars.ContextVar[rendering.Request | None] = contextvars.ContextVar("serving", default=None)


@attrs.define(kw_only=True)
class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus API-server defaulting of uid/creationTimestamp/generation on create."""

    creations: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    # Pods in the order they were created, and the peak number alive at once (exact: counted
    # inside the server, not by polling).
    pod_order: list[str] = attrs.field(factory=list, init=False)
    pods_alive: int = attrs.field(default=0, init=False)
    pods_peak: int = attrs.field(default=0, init=False)
    lease_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    # RBAC: called with each request of a client other than the test's own (httpx); False -> 403.
    authorizer: Callable[[rendering.Request], bool] | None = attrs.field(default=None, init=False)

    def __iter__(self) -> Iterator[rendering.Request]:
        """kmock picks the reaction for a request by testing `request in reaction_view` for each of
        its reactions, and every such test walks the whole request history through the view's
        filters: O(history) per request, quadratic over a test (a 20-job run slowed to ~0.1 jobs/s
        with several seconds per request). While a request is being served, the only request its
        views need is that one (no reaction here counts or slices requests); tests that read the
        history (outside any request) still get all of it."""
        serving = _SERVING.get()
        if serving is not None:
            yield serving
            return
        yield from super().__iter__()

    async def _handle(self, request: rendering.Request) -> Any:
        token = _SERVING.set(request)
        try:
            if not self._authorized(request):
                raise kmock.KubernetesError(
                    status=403, reason="Forbidden", message="the chart's RBAC does not allow this request"
                )
            if request.resource is not None and request.resource.plural == "leases":
                async with self.lease_lock:
                    return await self._handle_lease(request)
            return await self._handle_tracked(request)
        finally:
            _SERVING.reset(token)

    def _authorized(self, request: rendering.Request) -> bool:
        if self.authorizer is None or request.resource is None or not request.resource.plural:
            return True  # no RBAC set, or discovery (/api, /apis/G/V: allowed to every client)
        if request.headers.get("User-Agent", "").startswith("python-httpx/"):
            return True  # the test itself, playing user and kubelet
        return self.authorizer(request)

    async def _handle_lease(self, request: rendering.Request) -> Any:
        """resourceVersion as the API server keeps it, for Leases: bumped by every write, and a patch
        naming a stale one is refused (serialised by `lease_lock`, so check and write are atomic)."""
        data = request.data
        writing = request.action in (enums.action.CREATE, enums.action.UPDATE) and isinstance(data, dict)
        if writing and request.action == enums.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            stored = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
            current = str(
                ((stored.get("metadata") if stored is not None else None) or {}).get("resourceVersion")
            )
            wanted = (data.get("metadata") or {}).get("resourceVersion")
            if stored is not None and wanted and str(wanted) != current:
                raise kmock.KubernetesError(
                    status=409, reason="Conflict", message=f"lease changed: resourceVersion is {current}"
                )
            data.setdefault("metadata", {})["resourceVersion"] = str(
                int(current) + 1 if current.isdigit() else 1
            )
        return await self._handle_tracked(request)

    async def _handle_tracked(self, request: rendering.Request) -> Any:
        data = request.data
        is_pod = (
            request.resource is not None and request.resource.plural == "pods" and not request.subresource
        )
        key = (request.resource, request.namespace, request.name)
        deleting = is_pod and request.action == enums.action.DELETE and bool(request.name)
        if deleting and key in self.objects and not self.objects[key].deleted:
            self.pods_alive -= 1
        if request.action == enums.action.CREATE and isinstance(data, dict):
            if request.resource is not None and request.resource.plural:
                self.creations[request.resource.plural] += 1
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now_iso())
            meta.setdefault("generation", 1)
            meta.setdefault("resourceVersion", "1")
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
        if (
            request.action == enums.action.UPDATE
            and not request.subresource
            and isinstance(data, dict)
            and "spec" in data
            and key in self.objects
            and not self.objects[key].deleted
        ):
            stored_meta = self.objects[key].get("metadata") or {}
            data.setdefault("metadata", {})["generation"] = int(stored_meta.get("generation") or 1) + 1
        response = await super()._handle(request)
        if is_pod and request.action == enums.action.CREATE and response.status < 300:
            self.pod_order.append(str((request.data or {}).get("metadata", {}).get("name")))
            self.pods_alive += 1
            self.pods_peak = max(self.pods_peak, self.pods_alive)
        return response


def _now_iso() -> str:
    # Microseconds keep creation order stable for objects created in the same second (the real
    # API server has second precision; ties are broken by name in the operator).
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeHarness:
    """kmock in a background thread; a small synchronous REST client for tests.

    Use as a context manager. `url` is the emulator's base URL.
    """

    def __init__(self, namespace: str = NAMESPACE) -> None:
        self.namespace = namespace
        self._logs: dict[tuple[str, str, str], str] = {}
        self._live: dict[tuple[str, str, str], bytearray] = {}
        self._live_done: set[tuple[str, str, str]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock", daemon=True)
        self._stack: Any = None
        self.url = ""
        self.http: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> KubeHarness:
        self._thread.start()
        self.url = self._run(self._start())
        self.http = httpx.Client(base_url=self.url, timeout=60.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.http is not None:
            self.http.close()
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> str:
        emulator = _Emulator()
        for api, plural, kind, namespaced, subresources in RESOURCES:
            emulator.resources[f"{api}/{plural}"] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources
            )
        emulator[kmock.resource("v1/pods"), kmock.subresource("log")] << self._serve_log
        self._emulator = emulator
        self._server = kmock.Server(emulator)
        await emulator.__aenter__()
        await self._server.__aenter__()
        return str(self._server.url).rstrip("/")

    async def _stop(self) -> None:
        await self._server.__aexit__(None, None, None)
        await self._emulator.__aexit__(None, None, None)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # -- pod logs (kmock has no kubelet) -----------------------------------------------------

    def _serve_log(self, request: rendering.Request) -> rendering.Response:
        container = request.params.get("container", "")
        key = (request.namespace or "", request.name or "", container)
        if request.params.get("follow") == "true" and key in self._live and key not in self._logs:
            return rendering.Response(
                payload=self._follow_log(key), headers={"Content-Type": "text/plain; charset=utf-8"}
            )
        if key not in self._logs:
            raise kmock.KubernetesNotFoundError(
                message=f"no log for container {container!r} of pod {request.name!r}"
            )
        return rendering.Response(
            payload=self._logs[key].encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
        )

    def set_log(self, pod: str, container: str, text: str, namespace: str | None = None) -> None:
        self._logs[(namespace or self.namespace, pod, container)] = text

    # A running container's stdout, for `follow=true` readers (the shim's live output); the complete log
    # (`set_log`) replaces it when the container ends.
    def stream_log(self, pod: str, container: str, chunk: bytes, namespace: str | None = None) -> None:
        self._live.setdefault((namespace or self.namespace, pod, container), bytearray()).extend(chunk)

    def end_log(self, pod: str, container: str, namespace: str | None = None) -> None:
        self._live_done.add((namespace or self.namespace, pod, container))

    async def _follow_log(self, key: tuple[str, str, str]) -> AsyncIterator[bytes]:
        sent = 0
        yield b""  # answer at once (kmock sends the headers with the first chunk)
        while True:
            data = self._live.get(key, bytearray())
            if len(data) > sent:
                chunk = bytes(data[sent:])
                sent += len(chunk)
                yield chunk
            elif key in self._live_done:
                return
            else:
                await asyncio.sleep(0.05)

    # -- kubeconfig -----------------------------------------------------------------------------

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test-token"}}],
            "contexts": [
                {
                    "name": "kmock",
                    "context": {"cluster": "kmock", "user": "kmock", "namespace": self.namespace},
                }
            ],
            "current-context": "kmock",
        }
        path.write_text(json.dumps(config))
        return path

    # -- REST helpers -----------------------------------------------------------------------------

    def _path(self, kind: str, name: str | None = None, namespace: str | None = None) -> str:
        base, plural = PATHS[kind]
        path = f"{base}/namespaces/{namespace or self.namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def _client(self) -> httpx.Client:
        assert self.http is not None, "use KubeHarness as a context manager"
        return self.http

    def create(self, kind: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        resp = self._client().post(self._path(kind, namespace=namespace), json=body)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        resp = self._client().get(self._path(kind, name, namespace))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        resp = self._client().get(self._path(kind, namespace=namespace))
        resp.raise_for_status()
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    def patch(
        self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        resp = self._client().patch(
            self._path(kind, name, namespace),
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def patch_status(
        self, kind: str, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        resp = self._client().patch(
            self._path(kind, name, namespace) + "/status",
            content=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        resp = self._client().delete(self._path(kind, name, namespace))
        if resp.status_code == 404:
            return False
        resp.raise_for_status()
        return True

    def authorize(self, authorizer: Callable[[rendering.Request], bool] | None) -> None:
        self._emulator.authorizer = authorizer

    def creations(self, plural: str) -> int:
        """How many create requests for `plural` (e.g. "pods") the emulator has served."""
        return int(self._emulator.creations[plural])

    def requests(self) -> list[rendering.Request]:
        """Every request the emulator has served so far (kmock's history), oldest first."""
        return list(self._emulator)

    @property
    def pod_order(self) -> list[str]:
        return list(self._emulator.pod_order)

    @property
    def pods_peak(self) -> int:
        return int(self._emulator.pods_peak)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    for _ in itertools.count():
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)
    raise AssertionError("unreachable")


def iter_objects(items: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in items:
        yield item["metadata"]["name"], item
