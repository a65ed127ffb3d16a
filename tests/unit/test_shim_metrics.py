"""The shim's Prometheus metrics (tako_shim/metrics.py, GET /metrics): bounded labels, no tenant data,
no API key needed, counters that move with requests, submissions, finishes and webhook attempts.

The app and the local backend are real (aiohttp on loopback, SQLite); the sandbox runner is the queue
tests' fake, so the counters can be checked in milliseconds. tests/integration/test_metrics_server.py
runs the same against a real server process with runsc.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from test_shim_queue import FakeSandboxRunner, make_backend

from tako_shim.backends.local.backend import LocalBackend
from tako_shim.http.app import create_app
from tako_shim.metrics import MAX_JOB_TYPES, Gauges, ShimMetrics

KEY = "metrics-team-key-0123456789"
TENANT = "secret-tenant-name"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(scrape: dict[Any, float], route: str, method: str, status: str) -> float:
    return value(scrape, "takovm_shim_http_requests_total", route=route, method=method, status=status)


def test_labels_are_bounded_route_templates_known_methods_and_capped_job_types() -> None:
    metrics = ShimMetrics()
    metrics.request(None, "GET", 404, 0.01)
    metrics.request("/jobs/{job_id}", "BREW", 405, 0.01)
    for n in range(MAX_JOB_TYPES + 20):
        metrics.job_submitted(f"type-{n}")
    scrape = samples(metrics.exposition().decode())
    assert (
        value(scrape, "takovm_shim_http_requests_total", route="unmatched", method="GET", status="404") == 1
    )
    assert value(
        scrape, "takovm_shim_http_requests_total", route="/jobs/{job_id}", method="other", status="405"
    )
    job_types = {
        dict(labels)["job_type"] for name, labels in scrape if name == "takovm_shim_jobs_submitted_total"
    }
    assert len(job_types) == MAX_JOB_TYPES + 1 and "other" in job_types
    assert value(scrape, "takovm_shim_jobs_submitted_total", job_type="other") == 20


def test_webhook_outcomes_and_gauges_from_the_backend() -> None:
    metrics = ShimMetrics()
    for state in ("pending", "pending", "delivered", "failed"):
        metrics.webhook_attempt(state)
    metrics.gauges = lambda: Gauges(queue_depth=3, jobs_running=2, sessions_open=None)
    metrics.streams_open = lambda: 4
    scrape = samples(metrics.exposition().decode())
    assert value(scrape, "takovm_shim_webhook_deliveries_total", outcome="retrying") == 2
    assert value(scrape, "takovm_shim_webhook_deliveries_total", outcome="delivered") == 1
    assert value(scrape, "takovm_shim_webhook_deliveries_total", outcome="failed") == 1
    assert value(scrape, "takovm_shim_queue_depth") == 3
    assert value(scrape, "takovm_shim_jobs_running") == 2
    assert value(scrape, "takovm_shim_sse_streams_open") == 4
    assert not [name for name, _ in scrape if name == "takovm_shim_sessions_open"]  # unknown: no sample


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, LocalBackend, FakeSandboxRunner]]:
    runner = FakeSandboxRunner()
    backend = make_backend(
        tmp_path, runner, max_workers=1, api_keys={KEY: TENANT}, api_rate_limit_enabled=False
    )
    server = TestServer(create_app(backend.settings, backend), host="127.0.0.1")
    await server.start_server()
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10) as http:
        yield http, backend, runner
    await server.close()


async def test_metrics_need_no_key_and_move_with_requests_jobs_and_the_queue(
    shim: tuple[httpx.AsyncClient, LocalBackend, FakeSandboxRunner],
) -> None:
    http, _backend, runner = shim
    auth = {"Authorization": f"Bearer {KEY}"}
    code = "print('SECRET-CODE-MARKER')"
    first = (await http.post("/execute/async", json={"code": code}, headers=auth)).json()["job_id"]
    second = (await http.post("/execute/async", json={"code": code}, headers=auth)).json()["job_id"]
    assert (await http.get(f"/jobs/{first}", headers=auth)).status_code == 200
    assert (await http.get("/no/such/path/" + first)).status_code == 404
    await asyncio.sleep(0.1)

    scraped = await http.get("/metrics")  # no key: like /health
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    scrape = samples(scraped.text)
    assert value(scrape, "takovm_shim_jobs_submitted_total", job_type="default") == 2
    assert value(scrape, "takovm_shim_jobs_running") == 1 and value(scrape, "takovm_shim_queue_depth") == 1
    ok = {"route": "/jobs/{job_id}", "method": "GET", "status": "200"}
    assert value(scrape, "takovm_shim_http_requests_total", **ok) == 1
    assert (
        value(scrape, "takovm_shim_http_requests_total", route="/execute/async", method="POST", status="200")
        == 2
    )
    assert (
        value(scrape, "takovm_shim_http_requests_total", route="unmatched", method="GET", status="404") == 1
    )
    latency = {"route": "/execute/async", "method": "POST"}
    assert value(scrape, "takovm_shim_http_request_duration_seconds_count", **latency) == 2
    for secret in (first, second, TENANT, KEY, "SECRET-CODE-MARKER"):
        assert secret not in scraped.text, f"{secret} leaked into /metrics"

    runner.gate.set()
    for job in (first, second):
        result = await http.get(f"/jobs/{job}/result", params={"wait": "true", "timeout": 10}, headers=auth)
        assert result.json()["status"] == "succeeded"
    scrape = samples((await http.get("/metrics")).text)
    assert value(scrape, "takovm_shim_jobs_finished_total", status="succeeded", job_type="default") == 2
    assert value(scrape, "takovm_shim_jobs_running") == 0 and value(scrape, "takovm_shim_queue_depth") == 0


async def test_a_cancel_is_one_finish_not_two(shim: tuple[httpx.AsyncClient, LocalBackend, Any]) -> None:
    http, _backend, _runner = shim
    auth = {"Authorization": f"Bearer {KEY}"}
    running = (await http.post("/execute/async", json={"code": "1"}, headers=auth)).json()["job_id"]
    queued = (await http.post("/execute/async", json={"code": "2"}, headers=auth)).json()["job_id"]
    await asyncio.sleep(0.1)
    for job in (queued, running):
        assert (await http.post(f"/jobs/{job}/cancel", headers=auth)).status_code == 200
        await http.get(f"/jobs/{job}/result", params={"wait": "true", "timeout": 10}, headers=auth)
    await asyncio.sleep(0.2)  # the worker's own (dropped) terminal write for the running one
    scrape = samples((await http.get("/metrics")).text)
    assert value(scrape, "takovm_shim_jobs_finished_total", status="cancelled", job_type="default") == 2
    assert sum(v for (name, _), v in scrape.items() if name == "takovm_shim_jobs_finished_total") == 2


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, FakeSandboxRunner(), metrics_enabled=False)
    server = TestServer(create_app(backend.settings, backend), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url(""))) as http:
            assert (await http.get("/metrics")).status_code == 404
            assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]
    finally:
        await server.close()
