"""The operator's API request pattern under a burst (issue #17): how many requests a job costs, and that
they travel over pooled keep-alive connections. The real operator (kopf) against kmock; kmock records
every request it serves, and a TCP proxy in front of it counts the connections the operator opens."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_harness import KubeHarness, wait_for
from operator_support import OperatorThread, operator_options, sample_job

from tako_operator.settings import settings_from_env

pytestmark = pytest.mark.timeout(300)
JOBS = 30
# Per job: the code ConfigMap, the deny-all NetworkPolicy, the Pod, the status patch, the event.
MAX_REQUESTS_PER_JOB = 5


def _pending(kube: KubeHarness, names: list[str]) -> bool:
    jobs = {j["metadata"]["name"]: j for j in kube.list("pythonjobs")}
    return all(((jobs.get(n) or {}).get("status") or {}).get("phase") == "Pending" for n in names)


def _operator_requests(kube: KubeHarness, after: int) -> list[Any]:
    """Requests from the operator (kopf or its Kubernetes client; not this test's httpx) after
    request id `after`, watch streams excepted."""
    return [
        r
        for r in kube.requests()
        if r.id > after
        and not str(r.headers.get("User-Agent", "")).startswith("python-httpx")
        and r.params.get("watch") not in ("true", "1")
    ]


def test_a_burst_costs_at_most_five_requests_per_job(kube: KubeHarness, tmp_path: Path) -> None:
    op = OperatorThread(operator_options(kube, tmp_path, max_concurrent=1000)).start()
    try:
        kube.create("pythonjobs", sample_job("warmup"))  # the namespace's runner ConfigMap is made here
        wait_for(lambda: _pending(kube, ["warmup"]), timeout=60, what="the warm-up job's Pod")
        wait_for(lambda: kube.creations("events") >= 1, timeout=30, what="the warm-up job's event")
        first = max(r.id for r in kube.requests())
        names = [f"burst-{n:02d}" for n in range(JOBS)]
        for name in names:
            kube.create("pythonjobs", sample_job(name))
        wait_for(lambda: _pending(kube, names), timeout=120, what="every job Pending with its Pod")
        wait_for(lambda: kube.creations("events") >= 1 + JOBS, timeout=30, what="every job's event")
        last = max(r.id for r in kube.requests())
        wait_for(  # quiet: nothing more from the operator for the burst (pod-event and echo passes done)
            lambda: max(r.id for r in kube.requests()) == last or None, timeout=10, what="quiet"
        )
    finally:
        op.stop()
    requests = _operator_requests(kube, first)
    by_kind = collections.Counter(
        f"{r.method.value} {r.resource.plural if r.resource else r.url.path}" for r in requests
    )
    assert len(requests) <= MAX_REQUESTS_PER_JOB * JOBS, by_kind
    # what the five are: nothing is read back, nothing is created twice
    assert by_kind.get("GET pythonjobs", 0) == 0, by_kind
    assert by_kind.get("POST configmaps", 0) == JOBS, by_kind  # the code ConfigMaps; the runner's exists
    assert by_kind.get("POST pods", 0) == JOBS, by_kind
    assert kube.creations("pods") == 1 + JOBS


class CountingProxy:
    """A TCP proxy in front of the emulator that counts the connections it accepts."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _close(self) -> None:
        self.server.close()

    def __exit__(self, *exc: object) -> None:
        # asyncio objects are not thread-safe: the server is closed on its own loop's thread
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def proxy(kube: KubeHarness) -> Iterator[CountingProxy]:
    with CountingProxy(kube.url) as counting:
        yield counting


def test_api_calls_reuse_pooled_connections(
    kube: KubeHarness, proxy: CountingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency = 4
    monkeypatch.setenv("TAKO_OPERATOR_API_CONCURRENCY", str(concurrency))
    options = operator_options(kube, tmp_path, max_concurrent=1000, watch_server_timeout=300)
    options.config.api_concurrency = settings_from_env().api_concurrency  # the variable, as the chart sets it
    config = Path(options.kubeconfig or "")
    config.write_text(config.read_text().replace(kube.url, proxy.url))
    op = OperatorThread(options).start()
    try:
        kube.create("pythonjobs", sample_job("warmup"))
        wait_for(lambda: _pending(kube, ["warmup"]), timeout=60, what="the warm-up job's Pod")
        before = proxy.accepted
        names = [f"conn-{n:02d}" for n in range(JOBS)]
        for name in names:
            kube.create("pythonjobs", sample_job(name))
        wait_for(lambda: _pending(kube, names), timeout=120, what="every job Pending with its Pod")
        opened = proxy.accepted - before
    finally:
        op.stop()
    # ~4 calls per job over the proxy: one connection per call would be >= 4 * JOBS; pooled, at most
    # one per worker thread (kopf's own aiohttp session keeps its connections open as well)
    assert opened <= concurrency, f"{opened} new connections for {JOBS} jobs"
