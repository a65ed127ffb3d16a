"""The SDK against a real `tako-vm` server process (local backend, strict gVisor: real runsc sandboxes)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sandbox_server import SANDBOX_TESTS, strict_server

import tako_vm
from tako_vm.models.wire import ExecutionRecordFull, JobStatusResponse, PaginatedResponse
from tako_vm.testing import LocalServer

pytestmark = SANDBOX_TESTS

FIB50 = "a, b = 0, 1\nfor _ in range(50):\n    a, b = b, a + b\nprint(a)\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(tmp_path_factory, "sdk-server") as running:
        yield running


@pytest.fixture
def client(server: LocalServer) -> Iterator[tako_vm.Client]:
    with tako_vm.Client(server.url) as c:
        yield c


def test_submit_then_wait_returns_the_finished_record(client: tako_vm.Client) -> None:
    job_id = client.submit_code(FIB50, timeout=60)
    record = client.get_result(job_id, timeout=120)
    assert record["status"] == "succeeded" and record["stdout"] == "12586269025\n"
    assert record["exit_code"] == 0 and record["error"] is None
    assert client.get_status(job_id)["status"] == "succeeded"
    assert client.get_result(job_id)["stdout"] == "12586269025\n"  # without wait: the same record


def test_get_result_without_wait_answers_at_once_while_the_job_runs(client: tako_vm.Client) -> None:
    job_id = client.submit_code("import time\ntime.sleep(3)\nprint('done')", timeout=60)
    started = time.monotonic()
    early = client.get_result(job_id)
    assert time.monotonic() - started < 1.0
    assert early["status"] in {"queued", "running"} and early["exit_code"] is None
    with pytest.raises(tako_vm.WaitTimeoutError) as caught:
        client.get_result(job_id, timeout=1)
    assert caught.value.status_code == 408
    assert client.get_result(job_id, timeout=60)["stdout"] == "done\n"


def test_input_output_and_artifacts_round_trip(client: tako_vm.Client) -> None:
    code = (
        "import json\n"
        "data = json.load(open('/input/data.json'))\n"
        "json.dump({'double': data['n'] * 2}, open('/output/result.json', 'w'))\n"
        "open('/output/report.txt', 'w').write('n was %d' % data['n'])\n"
    )
    job_id = client.submit_code(code, {"n": 21}, timeout=60)
    record = client.get_result(job_id, timeout=120, view="full")
    assert record["status"] == "succeeded" and record["output"] == {"double": 42}
    assert "report.txt" in {artifact["name"] for artifact in record["artifacts"]}
    assert client.download_artifact(job_id, "report.txt") == b"n was 21"
    ExecutionRecordFull.model_validate(record)  # what the SDK hands back matches the wire models
    JobStatusResponse.model_validate(client.get_status(job_id))
    PaginatedResponse.model_validate(client.list_executions(limit=2))
    with pytest.raises(tako_vm.NotFoundError):
        client.download_artifact(job_id, "absent.txt")


def test_history_rerun_and_fork_keep_lineage(client: tako_vm.Client) -> None:
    parent = client.submit_code(
        "import json\nprint(json.load(open('/input/data.json'))['x'])", {"x": 7}, timeout=60
    )
    assert client.get_result(parent, timeout=120)["stdout"] == "7\n"
    rerun = client.rerun(parent)
    fork = client.fork(parent, "import json\nprint(json.load(open('/input/data.json'))['x'] * 10)")
    assert client.get_result(rerun, timeout=120)["stdout"] == "7\n"
    assert client.get_result(fork, timeout=120)["stdout"] == "70\n"
    rerun_full = client.get_execution(rerun, view="full")
    fork_full = client.get_execution(fork, view="full")
    assert (rerun_full["parent_execution_id"], rerun_full["relationship"]) == (parent, "rerun")
    assert (fork_full["parent_execution_id"], fork_full["relationship"]) == (parent, "fork")
    page = client.list_executions(status="succeeded", limit=1000)
    assert {parent, rerun, fork} <= {item["execution_id"] for item in page["items"]}
    assert page["count"] == len(page["items"]) and page["limit"] == 1000
    assert client.list_executions(limit=1)["count"] == 1


@pytest.mark.slow  # the server's cancel of a running sandbox takes ~10 s here (kill grace period)
def test_cancel_a_running_job(client: tako_vm.Client) -> None:
    job_id = client.submit_code("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=120)
    deadline = time.monotonic() + 30
    while client.get_status(job_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.cancel(job_id) == {"status": "cancelled", "job_id": job_id}
    assert client.get_result(job_id, timeout=30)["status"] == "cancelled"
    with pytest.raises(tako_vm.NotFoundError):
        client.cancel(job_id)  # already finished


def test_idempotent_replay_and_conflict(client: tako_vm.Client) -> None:
    first = client.submit_code("print('once')", timeout=30, idempotency_key="sdk-test-replay-1")
    again = client.submit_code("print('once')", timeout=30, idempotency_key="sdk-test-replay-1")
    assert again == first
    with pytest.raises(tako_vm.ConflictError, match="different payload"):
        client.submit_code("print('twice')", timeout=30, idempotency_key="sdk-test-replay-1")
    assert client.get_result(first, timeout=120)["stdout"] == "once\n"


def test_server_validation_errors_are_client_errors_naming_the_field(client: tako_vm.Client) -> None:
    with pytest.raises(tako_vm.ClientError) as caught:
        client.submit_code("print(1)", timeout=10**6)
    assert caught.value.status_code == 422 and "timeout" in caught.value.detail
    assert isinstance(caught.value, tako_vm.UnprocessableEntityError)
    assert isinstance(caught.value, tako_vm.ValidationError)  # one except for bad input, SDK- or server-side
    with pytest.raises(tako_vm.NotFoundError):
        client.get_status("no-such-job")


@dataclass
class Order:
    prices: list[float]
    tax_rate: float


@dataclass
class Invoice:
    total: float
    items: int


def invoice(order: Order) -> Invoice:
    return Invoice(total=round(sum(order.prices) * (1 + order.tax_rate), 2), items=len(order.prices))


def test_sync_execute_and_typed_send(client: tako_vm.Client) -> None:
    response = client.execute("print('sync')", timeout=30)
    assert response["success"] is True and response["stdout"] == "sync\n"
    assert client.send(invoice, Order([10.0, 5.0], 0.2), timeout=30) == Invoice(total=18.0, items=2)
    failed = client.execute("raise SystemExit(4)", timeout=30)
    assert failed["success"] is False and failed["exit_code"] == 4


async def test_async_client_waits_without_blocking_the_event_loop(server: LocalServer) -> None:
    beats: list[float] = []

    async def ticker() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    # Made before the ticker starts: building an httpx client loads TLS certificates synchronously.
    async with tako_vm.AsyncClient(server.url) as client:
        beat = asyncio.create_task(ticker())
        started = time.monotonic()
        job_id = await client.submit_code("import time\ntime.sleep(3)\nprint('slept')", timeout=60)
        record = await client.get_result(job_id, timeout=60)
        assert time.monotonic() - started >= 3
        beat.cancel()
    assert record["stdout"] == "slept\n"
    # A blocking long-poll would stall the loop for the whole 3+ s job; allow for a heavily loaded machine.
    longest_stall = max(b - a for a, b in itertools.pairwise(beats))
    assert longest_stall < 1.5, f"event loop stalled {longest_stall:.2f}s"


def test_module_level_functions_against_the_server(server: LocalServer) -> None:
    tako_vm.configure(server.url)
    try:
        job_id = tako_vm.submit_code("print(sum(range(10)))", timeout=30)
        assert tako_vm.get_result(job_id, timeout=60)["stdout"] == "45\n"
        assert tako_vm.health()["status"] == "healthy"
        assert set(tako_vm.pool_stats()) >= {"pending", "running", "max_workers", "max_queue_size"}
    finally:
        tako_vm.configure()


def test_transport_errors_are_typed_when_nothing_listens() -> None:
    with tako_vm.Client("http://127.0.0.1:9", max_retries=0) as client, pytest.raises(tako_vm.TransportError):
        client.health()
    assert issubclass(tako_vm.TransportError, tako_vm.TakoVMError)


class LoseFirstResponse(httpx.BaseTransport):
    """A flaky network: the first request reaches the real server, but its answer never comes back."""

    def __init__(self) -> None:
        self.real = httpx.HTTPTransport()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        response = self.real.handle_request(request)
        if self.sent == 1:
            response.read()
            raise httpx.ReadError("connection reset after the server accepted the job")
        return response


def test_a_lost_answer_is_retried_with_the_same_key_and_runs_the_code_once(server: LocalServer) -> None:
    marker = f"ran-once-{time.monotonic_ns()}"
    flaky = LoseFirstResponse()
    with tako_vm.Client(server.url, transport=flaky) as client:
        job_id = client.submit_code(f"print({marker!r})", timeout=30)
        assert flaky.sent == 2
        assert client.get_result(job_id, timeout=60)["stdout"] == marker + "\n"
        runs = [
            item for item in client.list_executions(limit=1000)["items"] if item["stdout"] == marker + "\n"
        ]
    assert [run["execution_id"] for run in runs] == [job_id]
