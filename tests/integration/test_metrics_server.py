"""GET /metrics of a real server process (local backend, real runsc): a submitted job moves the counters,
an open SSE stream and a running job show in the gauges, a webhook attempt is counted, and nothing of
the tenant (key, name, job id, code) appears in the scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sandbox_server import SANDBOX_TESTS, strict_server
from webhook_support import SECRET, Receiver

from tako_vm.testing import LocalServer

KEY = "metrics-integration-key-0123456789"
TENANT = "metrics-tenant-zz"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(
        tmp_path_factory,
        "metrics",
        max_workers=1,
        warm_pool_size=0,
        api_auth_enabled=True,
        api_keys={KEY: TENANT},
        webhook_secrets={TENANT: SECRET},
        webhook_allowlist=["127.0.0.1/32"],
    ) as running:
        yield running


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = httpx.get(f"{url}/metrics", timeout=10)  # no API key, as Prometheus scrapes
    assert response.status_code == 200, response.text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    return response.text, found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_submitted_job_moves_the_counters_and_gauges(server: LocalServer) -> None:
    _, before = scrape(server.url)
    receiver = Receiver().start()
    try:
        code = "import time\nprint('METRICS-MARKER')\ntime.sleep(3)\n"
        response = httpx.post(
            f"{server.url}/execute/async",
            json={"code": code, "webhook_url": receiver.url},
            headers=AUTH,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["job_id"]

        opened = threading.Event()

        def follow() -> None:  # an SSE client that stays until the result event
            with httpx.stream(
                "GET", f"{server.url}/jobs/{job_id}/events", headers=AUTH, timeout=60
            ) as events:
                opened.set()
                for _ in events.iter_lines():
                    pass

        reader = threading.Thread(target=follow)
        reader.start()
        assert opened.wait(30)
        deadline = time.monotonic() + 30
        while True:
            text, during = scrape(server.url)
            if value(during, "takovm_shim_jobs_running") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(during, "takovm_shim_jobs_running") == 1
        assert value(during, "takovm_shim_sse_streams_open") == 1
        submitted = value(during, "takovm_shim_jobs_submitted_total", job_type="default")
        assert submitted == value(before, "takovm_shim_jobs_submitted_total", job_type="default") + 1

        result = httpx.get(
            f"{server.url}/jobs/{job_id}/result",
            params={"wait": "true", "timeout": 60},
            headers=AUTH,
            timeout=90,
        )
        assert result.json()["status"] == "succeeded"
        reader.join(30)
        deadline = time.monotonic() + 30
        while True:
            text, after = scrape(server.url)
            if value(after, "takovm_shim_webhook_deliveries_total", outcome="delivered") or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
    finally:
        receiver.stop()
    finished = {"status": "succeeded", "job_type": "default"}
    assert value(after, "takovm_shim_jobs_finished_total", **finished) == (
        value(before, "takovm_shim_jobs_finished_total", **finished) + 1
    )
    assert value(after, "takovm_shim_webhook_deliveries_total", outcome="delivered") == 1
    assert value(after, "takovm_shim_jobs_running") == 0 and value(after, "takovm_shim_sse_streams_open") == 0
    events = {"route": "/jobs/{job_id}/events", "method": "GET", "status": "200"}
    assert value(after, "takovm_shim_http_requests_total", **events) == 1
    for secret in (job_id, KEY, TENANT, "METRICS-MARKER", receiver.url):
        assert secret not in text, f"{secret} leaked into /metrics"
