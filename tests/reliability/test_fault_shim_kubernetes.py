"""API-server and network faults under the shim's kubernetes backend (its shared job watch, its creates).

The real shim (aiohttp app, ``KubernetesBackend``) talks over real HTTP to kmock through ``ApiProxy``, a
TCP proxy that injects the faults: it answers chosen requests itself (410 Gone as the HTTP status or as
an ``ERROR`` event in a 200 stream, 500s), cuts live connections abruptly (the watch stream dies
mid-flight), refuses new ones (an outage), or forwards a POST and then loses its answer (the job was
created, the shim never hears so). Faults are injected in the proxy rather than with a kmock reaction:
a kmock reaction that returns ``None`` to step aside answers an empty 200 instead (kmock 0.8), which
would hide whether the shim recovers.

No operator runs: the test writes the terminal ``status`` straight into kmock (not through the
proxy), which is what the operator does when a job finishes. The shim's reaction is the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from kube_harness import KubeHarness
from test_shim_kubernetes import job_type_object

from tako_shim.backends import kubernetes as kubernetes_backend
from tako_shim.backends.kubernetes.api import KubeApiError
from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.errors import InvalidRequest
from tako_shim.http.app import create_app
from tako_shim.submission import JobResolver, Overrides
from tako_vm.models.wire import ExecuteRequest

pytestmark = [pytest.mark.timeout(60)]

GONE = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410}
BOOM = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500}
JOBS_PATH = "/apis/takovm.dev/v1alpha1/namespaces/tako-test/pythonjobs"
WATCH_JOBS = f"GET {JOBS_PATH}?watch=true"
CREATE_JOB = f"POST {JOBS_PATH} "


# -- fault injection ---------------------------------------------------------------------------------


@dataclass
class Fault:
    """Answer the next ``times`` requests whose request line starts with ``request`` with this."""

    request: str
    status: int
    body: dict[str, Any]
    times: int
    served: int = 0
    stall: bool = False  # answer 200 and then send nothing, keeping the stream open (a hung watch)

    def answer(self) -> bytes:
        if self.stall:
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        payload = json.dumps(self.body).encode() + b"\n"
        head = (
            f"HTTP/1.1 {self.status} Injected\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + payload


class ApiProxy:
    """A TCP proxy in front of the API that answers, cuts, refuses and loses answers on request."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.refusing = False
        self.posts_to_lose = 0
        self.lost_answers = 0
        self.faults: list[Fault] = []
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> ApiProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def inject(
        self, request: str, status: int, body: dict[str, Any], times: int = 1, stall: bool = False
    ) -> Fault:
        fault = Fault(request, status, body, times, stall=stall)
        self.faults.append(fault)
        return fault

    def outage(self) -> None:
        """The API becomes unreachable: live connections are cut and new ones refused."""
        self.refusing = True
        self.drop_all()

    def drop_all(self) -> int:
        """Abort every live connection (no final bytes, no orderly close): the watch stream dies."""
        links = list(self._links)
        for client, upstream in links:
            client.transport.abort()
            upstream.transport.abort()
        return len(links)

    def _fault_for(self, data: bytes) -> Fault | None:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        for fault in self.faults:
            if fault.served < fault.times and line.startswith(fault.request):
                fault.served += 1
                return fault
        return None

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        # Ends normally even when cancelled at close: asyncio logs a connection task that ends cancelled.
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(client_in, client_out)

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_out.transport.abort()
            return
        try:
            upstream_in, upstream_out = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_out.transport.abort()
            return
        link = (client_out, upstream_out)
        self._links.add(link)
        doomed = asyncio.Event()

        async def forward_requests() -> None:
            while data := await client_in.read(65536):
                fault = self._fault_for(data)
                if fault is not None:  # answered here; the API never sees the request
                    client_out.write(fault.answer())
                    await client_out.drain()
                    if fault.stall:
                        await asyncio.Event().wait()  # until the link is dropped
                    client_out.close()
                    return
                if self.posts_to_lose and data.startswith(b"POST "):
                    self.posts_to_lose -= 1
                    doomed.set()  # set before the request leaves, so its answer is surely swallowed
                upstream_out.write(data)
                await upstream_out.drain()

        async def forward_answers() -> None:
            while data := await upstream_in.read(65536):
                if doomed.is_set():
                    self.lost_answers += 1
                    return  # the request was served upstream; its answer never arrives
                client_out.write(data)
                await client_out.drain()

        tasks = [asyncio.create_task(forward_requests()), asyncio.create_task(forward_answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._links.discard(link)
            if not client_out.is_closing():
                client_out.transport.abort()
            upstream_out.transport.abort()


# -- the shim under test ----------------------------------------------------------------------------


class Shim:
    def __init__(self, server: TestServer, backend: KubernetesBackend) -> None:
        self.server = server
        self.backend = backend
        self.http = httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30)

    async def submit(self, **body: Any) -> str:
        response = await self.http.post("/execute/async", json={"code": "print(1)", **body})
        assert response.status_code == 200, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def long_poll(self, job_id: str, timeout: int = 30) -> asyncio.Task[httpx.Response]:
        return asyncio.create_task(
            self.http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": timeout})
        )

    async def waiters(self, count: int) -> None:
        """Until ``count`` long-polls wait and the watch is streaming (it replayed their jobs)."""
        watch = self.backend.watch
        await until(lambda: watch.waiter_count() == count, f"{count} long-poll waiter(s)")
        await until(
            lambda: sum(stats.events for stats in watch.stats.values()) >= count, "the watch's replay"
        )


async def until(check: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within} s waiting for {what}")


def kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig-via-proxy"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "test-token"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


@pytest.fixture
def kube() -> Any:
    with KubeHarness() as harness:
        yield harness


@pytest.fixture
async def proxy(kube: KubeHarness) -> AsyncIterator[ApiProxy]:
    started = await ApiProxy(kube.url).start()
    yield started
    await started.close()


@pytest.fixture
def shim_settings() -> dict[str, Any]:
    """Settings overrides for the shim; a test parametrizes this name to change them."""
    return {}


@pytest.fixture
async def shim(
    kube: KubeHarness, proxy: ApiProxy, tmp_path: Path, shim_settings: dict[str, Any]
) -> AsyncIterator[Shim]:
    settings = Settings(
        backend="kubernetes",
        api_rate_limit_enabled=False,
        kubernetes=KubernetesOptions(
            namespace=kube.namespace, kubeconfig=str(kubeconfig(tmp_path, proxy.url))
        ),
        data_dir=tmp_path / "unused",
        **shim_settings,
    )
    backend = KubernetesBackend(settings)
    server = TestServer(create_app(settings, backend), host="127.0.0.1")
    await server.start_server()
    running = Shim(server, backend)
    yield running
    await running.http.aclose()
    await server.close()


def finish(kube: KubeHarness, job_id: str, stdout: str = "done\n") -> None:
    """What the operator writes when a job's Pod succeeded (straight into kmock, not via the proxy)."""
    kube.patch_status(
        "pythonjobs",
        job_id,
        {
            "phase": "Succeeded",
            "exitCode": 0,
            "stdout": stdout,
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:01Z",
        },
    )


def assert_cluster_unavailable(response: httpx.Response) -> None:
    """The contract's answer to an API outage: a clear 503 with a retry hint, never a 500 traceback."""
    assert response.status_code == 503 and response.headers["Retry-After"] == "2", response.text
    assert "Kubernetes API unavailable" in response.json()["detail"] and "Traceback" not in response.text


async def assert_result(poll: asyncio.Task[httpx.Response], stdout: str, within: float = 20) -> None:
    response = await asyncio.wait_for(poll, within)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "succeeded" and record["stdout"] == stdout, record


# -- watch faults ----------------------------------------------------------------------------------


async def test_410_gone_inside_the_watch_stream_still_delivers_the_result(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    expired = proxy.inject(WATCH_JOBS, 200, {"type": "ERROR", "object": GONE}, times=2)
    job_id = await shim.submit()
    poll = shim.long_poll(job_id)
    await shim.waiters(1)
    await until(lambda: expired.served == 2, "both expired watch streams")
    await asyncio.to_thread(finish, kube, job_id, "after gone\n")
    await assert_result(poll, "after gone\n")
    stats = shim.backend.watch.stats[kube.namespace]
    assert stats.restarts_after_gone == 2 and stats.errors == 0


async def test_http_410_gone_answer_to_the_watch_request_still_delivers_the_result(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    gone = proxy.inject(WATCH_JOBS, 410, GONE)
    job_id = await shim.submit()
    poll = shim.long_poll(job_id)
    await until(lambda: gone.served == 1, "the 410 answer")
    await asyncio.to_thread(finish, kube, job_id, "after http 410\n")
    await assert_result(poll, "after http 410\n")
    assert shim.backend.watch.stats[kube.namespace].restarts_after_gone == 1


async def test_500s_on_the_watch_back_off_then_deliver_the_result_and_health_recovers(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_backend, "HEALTH_CACHE_SECONDS", 0.0)
    errors = proxy.inject(WATCH_JOBS, 500, BOOM, times=3)
    job_id = await shim.submit()
    poll = shim.long_poll(job_id)
    await until(lambda: errors.served >= 1, "the first 500")
    health = (await shim.http.get("/health")).json()
    assert health["status"] == "degraded", "a failing watch means long-polls cannot wake: degraded"
    await until(lambda: errors.served == 3, "three 500s (backing off 0.2, 0.4, 0.8 s)")
    await asyncio.to_thread(finish, kube, job_id, "after 500s\n")
    await assert_result(poll, "after 500s\n")
    assert shim.backend.watch.stats[kube.namespace].errors == 3
    assert (await shim.http.get("/health")).json()["status"] == "healthy"


async def test_watch_connection_cut_mid_stream_long_polls_still_get_their_results(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    jobs = [await shim.submit() for _ in range(3)]
    polls = [shim.long_poll(job_id) for job_id in jobs]
    await shim.waiters(3)
    opened = shim.backend.watch.stats[kube.namespace].streams_opened
    assert proxy.drop_all() >= 1, "the watch stream runs through the proxy"
    await asyncio.to_thread(finish, kube, jobs[0], "first\n")
    await assert_result(polls[0], "first\n")
    assert shim.backend.watch.stats[kube.namespace].streams_opened > opened, "the watch re-opened"
    proxy.drop_all()  # and again, while the others still wait
    for index, job_id in enumerate(jobs[1:], start=1):
        await asyncio.to_thread(finish, kube, job_id, f"job {index}\n")
    for index, poll in enumerate(polls[1:], start=1):
        await assert_result(poll, f"job {index}\n")


async def test_api_outage_health_degrades_waiters_get_results_after_recovery(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_backend, "HEALTH_CACHE_SECONDS", 0.0)
    job_id = await shim.submit()
    poll = shim.long_poll(job_id)
    await shim.waiters(1)
    assert (await shim.http.get("/health")).json()["status"] == "healthy"

    proxy.outage()
    health = (await shim.http.get("/health")).json()
    assert health["status"] == "degraded" and health["docker_available"] is False
    refused = await shim.http.post("/execute/async", json={"code": "print(1)"})
    assert_cluster_unavailable(refused)
    await asyncio.to_thread(finish, kube, job_id, "finished during the outage\n")  # missed by the watch
    await asyncio.sleep(1)
    assert not poll.done(), "the waiter keeps waiting through the outage (no error, no 408)"

    proxy.refusing = False
    await assert_result(poll, "finished during the outage\n")  # the re-opened watch replays the job
    await until(lambda: not shim.backend.watch.failing_namespaces(), "the watch to be up again")
    assert (await shim.http.get("/health")).json()["status"] == "healthy"


async def test_long_poll_ending_during_an_outage_is_a_503_with_retry_after_not_a_408(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    job_id = await shim.submit()
    poll = shim.long_poll(job_id, timeout=3)
    await shim.waiters(1)
    proxy.outage()
    response = await asyncio.wait_for(poll, 20)
    assert_cluster_unavailable(response)


async def test_a_completion_a_stalled_watch_missed_is_found_at_the_deadline_instead_of_a_408(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    """A hung watch stream (200, then silence) must not turn a finished job into a 408."""
    job_id = await shim.submit()
    poll = shim.long_poll(job_id, timeout=6)
    await shim.waiters(1)
    hung = proxy.inject(WATCH_JOBS, 200, {}, stall=True)
    proxy.drop_all()  # the watch re-opens into the hung stream
    await until(lambda: hung.served == 1, "the watch to re-open into the hung stream")
    await asyncio.to_thread(finish, kube, job_id, "missed by the watch\n")
    await asyncio.sleep(0.5)
    assert not poll.done()
    await assert_result(poll, "missed by the watch\n")  # read once more at the deadline


# -- create faults and idempotency -------------------------------------------------------------------


async def test_500_on_create_is_a_503_with_retry_after_and_the_retry_creates_exactly_one_job(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    boom = proxy.inject(CREATE_JOB, 500, BOOM)
    body = {"code": "print('once')", "idempotency_key": "create-500-retry"}
    first = await shim.http.post("/execute/async", json=body)
    assert_cluster_unavailable(first)
    assert boom.served == 1
    second = await shim.http.post("/execute/async", json=body)
    assert second.status_code == 200, second.text
    third = await shim.http.post("/execute/async", json=body)
    assert third.json()["job_id"] == second.json()["job_id"]
    assert len(kube.list("pythonjobs")) == 1


async def test_a_lost_create_answer_retried_with_the_same_key_finds_the_job_instead_of_running_twice(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    body = {"code": "print('exactly once')", "idempotency_key": "lost-answer-0001"}
    proxy.posts_to_lose = 1
    first = await shim.http.post("/execute/async", json=body)
    assert_cluster_unavailable(first)
    assert proxy.lost_answers == 1
    created = kube.list("pythonjobs")
    assert len(created) == 1, "the API did create the job; only its answer was lost"
    retry = await shim.http.post("/execute/async", json=body)
    assert retry.status_code == 200, retry.text
    assert retry.json()["job_id"] == created[0]["metadata"]["name"]
    assert len(kube.list("pythonjobs")) == 1 and kube.creations("pythonjobs") == 2

    different = await shim.http.post("/execute/async", json={**body, "code": "print('other')"})
    assert different.status_code == 409, different.text


async def test_the_sdk_retries_a_lost_create_answer_with_its_own_key_and_gets_one_job(
    kube: KubeHarness, shim: Shim, proxy: ApiProxy
) -> None:
    """The SDK's retry of a 503 (same idempotency key it generated) meets the job the lost POST made."""
    from tako_vm import Client

    proxy.posts_to_lose = 1
    pauses: list[float] = []
    with Client(base_url=str(shim.server.make_url("")), timeout=30, sleep=pauses.append) as client:
        job_id = await asyncio.to_thread(client.submit_code, "print('sdk')")
    jobs = kube.list("pythonjobs")
    assert [j["metadata"]["name"] for j in jobs] == [job_id] and proxy.lost_answers == 1
    assert pauses == [2.0], "one retry, after the server's Retry-After"


# -- input the shim must refuse before it reaches the API ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (b'{"code":"print(1)","input_data":{"x":NaN}}', "input_data", "input_data.x is NaN or Infinity"),
        (b'{"code":"print(1)","input_data":{"x":[-Infinity]}}', "input_data", "input_data.x[0] is NaN"),
        (b'{"code":"print(1)","timeout":true}', "timeout", "not a boolean"),
        (b'{"code":"print(1)","startup_timeout":"60"}', "startup_timeout", "not a string"),
    ],
)
async def test_lax_json_is_a_422_naming_the_field_and_creates_no_job(
    kube: KubeHarness, shim: Shim, body: bytes, field: str, says: str
) -> None:
    response = await shim.http.post(
        "/execute/async", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = json.loads(response.text, parse_constant=_refuse_constant)["detail"]  # strict JSON back
    assert detail[0]["loc"] == ["body", field] and says in detail[0]["msg"]
    assert kube.list("pythonjobs") == []


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"the error body is not strict JSON: it contains {name}")


# -- job type defaults -------------------------------------------------------------------------------


async def test_a_job_without_timeout_takes_its_job_types_timeouts(kube: KubeHarness, shim: Shim) -> None:
    kube.create("pythonjobtypes", job_type_object("slow-etl", timeoutSeconds=240, startupTimeoutSeconds=90))
    kube.create("pythonjobtypes", job_type_object("plain"))  # sets no timeout: the shim's defaults apply
    typed = kube.get("pythonjobs", await shim.submit(job_type="slow-etl"))
    explicit = kube.get("pythonjobs", await shim.submit(job_type="slow-etl", timeout=15))
    plain = kube.get("pythonjobs", await shim.submit(job_type="plain"))
    builtin = kube.get("pythonjobs", await shim.submit())
    assert typed and explicit and plain and builtin
    assert (typed["spec"]["timeoutSeconds"], typed["spec"]["startupTimeoutSeconds"]) == (240, 90)
    assert (explicit["spec"]["timeoutSeconds"], explicit["spec"]["startupTimeoutSeconds"]) == (15, 90)
    settings = shim.backend.settings
    assert plain["spec"]["timeoutSeconds"] == builtin["spec"]["timeoutSeconds"] == settings.default_timeout


async def test_a_job_types_timeout_above_max_timeout_is_a_422_naming_the_job_type(
    kube: KubeHarness, shim: Shim
) -> None:
    kube.create("pythonjobtypes", job_type_object("too-long", timeoutSeconds=3600))
    response = await shim.http.post("/execute/async", json={"code": "print(1)", "job_type": "too-long"})
    assert response.status_code == 422, response.text
    assert "job_type: 'too-long' has a timeout of 3600 seconds" in response.json()["detail"]
    assert "max_timeout of 300" in response.json()["detail"]
    assert kube.list("pythonjobs") == []
    assert (
        await shim.http.post("/execute/async", json={"code": "1", "job_type": "too-long", "timeout": 60})
    ).status_code == 200


# -- queue cap -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shim_settings", [{"max_queue_size": 2}])
async def test_max_queue_size_refuses_new_jobs_with_503_but_answers_retries_and_keeps_keys(
    kube: KubeHarness, shim: Shim, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await shim.submit(idempotency_key="queued-job-0001")
    await shim.submit()
    full = await shim.http.post("/execute/async", json={"code": "print(3)", "idempotency_key": "waits-0001"})
    assert full.status_code == 503 and full.headers["Retry-After"] == "5", full.text
    assert full.json()["detail"] == "Job queue is full. Try again later."
    replay = await shim.http.post(
        "/execute/async", json={"code": "print(1)", "idempotency_key": "queued-job-0001"}
    )
    assert replay.status_code == 200 and replay.json()["job_id"] == first, "a retry is answered when full"
    conflict = await shim.http.post(
        "/execute/async", json={"code": "x=1", "idempotency_key": "queued-job-0001"}
    )
    assert conflict.status_code == 409, conflict.text
    assert len(kube.list("pythonjobs")) == 2

    monkeypatch.setattr(kubernetes_backend, "QUEUE_COUNT_MAX_AGE_SECONDS", 0.0)
    await asyncio.to_thread(finish, kube, first)  # one queued job is done: room for one more
    room = await shim.http.post("/execute/async", json={"code": "print(3)", "idempotency_key": "waits-0001"})
    assert room.status_code == 200, "the refused key was not used up"
    again = await shim.http.post("/execute/async", json={"code": "print(4)"})
    assert again.status_code == 503 and len(kube.list("pythonjobs")) == 3
    rerun = await shim.http.post(f"/jobs/{first}/rerun")  # the parent is finished, the queue full
    assert rerun.status_code == 503 and len(kube.list("pythonjobs")) == 3


@pytest.mark.filterwarnings("error::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_request_state_uses_typed_keys_so_aiohttp_warns_nothing(kube: KubeHarness, shim: Shim) -> None:
    """Per-request state (correlation id, tenant) is stored under ``web.RequestKey``: with the warning
    turned into an error, a string key would make this submit a 500."""
    response = await shim.http.post(
        "/execute/async", json={"code": "print(1)"}, headers={"X-Correlation-ID": "c-1"}
    )
    assert response.status_code == 200, response.text
    job = kube.get("pythonjobs", response.json()["job_id"]) or {}
    assert job["metadata"]["annotations"]["takovm.dev/correlation-id"] == "c-1"


async def test_clients_vanishing_mid_long_poll_leave_no_waiters_behind(kube: KubeHarness, shim: Shim) -> None:
    """20 clients give up on a 2 s long-poll after 0.3 s: their waiters go when the wait ends, and the
    shim still answers (aiohttp lets a handler finish after its client left)."""
    job_id = await shim.submit()
    give_up = httpx.Timeout(10.0, read=0.3)  # connecting may be slow on a loaded machine; reading is not
    clients = [httpx.AsyncClient(base_url=shim.http.base_url, timeout=give_up) for _ in range(20)]
    polls = [c.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 2}) for c in clients]
    outcomes = await asyncio.gather(*polls, return_exceptions=True)
    assert all(isinstance(o, httpx.ReadTimeout) for o in outcomes), outcomes
    for client in clients:
        await client.aclose()
    await until(lambda: shim.backend.watch.waiter_count() == 0, "the abandoned waiters to go", within=10)
    assert (await shim.http.get("/health")).json()["status"] == "healthy"
    poll = shim.long_poll(job_id)
    await asyncio.to_thread(finish, kube, job_id, "still served\n")
    await assert_result(poll, "still served\n")


# -- the pure pieces behind the answers above ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "http", "retry_after"),
    [
        (0, 503, "2"),
        (500, 503, "2"),
        (503, 503, "2"),
        (429, 503, "2"),
        (403, 503, None),
        (404, 503, None),
        (400, 422, None),
    ],
)
def test_api_failures_map_to_contract_errors_never_500(
    status: int, http: int, retry_after: str | None
) -> None:
    error = kubernetes_backend.api_failure(KubeApiError(status, "Reason", "message from the API"))
    assert error.status == http and error.headers.get("Retry-After") == retry_after
    assert "message from the API" in error.detail


def test_job_type_timeouts_fill_only_what_the_request_left_unset() -> None:
    resolver = JobResolver(Settings(max_timeout=600))
    unset = resolver.resolve(ExecuteRequest(code="print(1)"))
    assert resolver.with_job_type_timeouts(unset, 240, 90).timeout == 240
    assert resolver.with_job_type_timeouts(unset, 240, 90).startup_timeout == 90
    assert resolver.with_job_type_timeouts(unset, None, None) == unset
    explicit = resolver.resolve(ExecuteRequest(code="print(1)", timeout=15, startup_timeout=20))
    assert resolver.with_job_type_timeouts(explicit, 240, 90) == explicit
    rerun = resolver.derive(unset, "parent", "rerun", Overrides())
    assert resolver.with_job_type_timeouts(rerun, 240, 90) == rerun, "a rerun keeps its parent's"
    with pytest.raises(InvalidRequest, match="max_timeout of 600"):
        resolver.with_job_type_timeouts(unset, 601, None)
