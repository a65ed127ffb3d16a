"""One tenant's jobs try to stall or break the shared server (issue #19, findings 1 and 6).

Real server, real runsc sandboxes (the ``server`` fixture of this tier). ``/health`` is probed while the
attack runs and must answer within 0.5 s every time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tako_vm.testing import LocalServer

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
HEALTH_BUDGET_SECONDS = 0.5


async def health_latencies(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        response = await client.get("/health")
        latencies.append(time.monotonic() - started if response.status_code == 200 else 99.0)
        await asyncio.sleep(0.2)
    return latencies


async def finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 120})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_artifact_flood_is_capped_named_and_does_not_stall_health(server: LocalServer) -> None:
    code = "for i in range(5000):\n    open(f'/output/f{i:05d}', 'w').close()\nprint('wrote')"
    async with httpx.AsyncClient(base_url=server.url, timeout=180) as client:
        job_id = (await client.post("/execute/async", json={"code": code, "timeout": 120})).json()["job_id"]
        stop = asyncio.Event()
        probe = asyncio.create_task(health_latencies(client, stop))

        async def poll_full() -> None:  # four clients re-reading the record (each read was 100k models)
            while not stop.is_set():
                await client.get(f"/jobs/{job_id}/result", params={"view": "full"})
                await asyncio.sleep(0.05)

        pollers = [asyncio.create_task(poll_full()) for _ in range(4)]
        record = await finished(client, job_id)
        full = (await client.get(f"/jobs/{job_id}/result", params={"view": "full"})).json()
        await asyncio.sleep(2)  # keep polling the finished record
        stop.set()
        latencies = await probe
        await asyncio.gather(*pollers)
    assert record["status"] == "failed" and record["stdout"] == "wrote\n"
    assert record["error"]["type"] == "invalid_output"
    assert (
        "5000 files" in record["error"]["message"] and "max_artifact_count=1000" in record["error"]["message"]
    )
    assert len(full["artifacts"]) == 1000
    assert max(latencies) < HEALTH_BUDGET_SECONDS, sorted(latencies)[-5:]


@pytest.mark.parametrize(
    ("result", "problem"),
    [('{"a":' * 300 + "1" + "}" * 300, "max_output_depth"), ('{"big": 1e400}', "finite")],
)
def test_a_deep_or_non_finite_result_is_the_users_error_and_history_still_answers(
    http: httpx.Client, result: str, problem: str
) -> None:
    code = f"print('my stdout')\nopen('/output/result.json', 'w').write({result!r})"
    job_id = http.post("/execute/async", json={"code": code}).json()["job_id"]
    record = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 120}).json()
    assert record["status"] == "failed" and record["stdout"] == "my stdout\n"  # stdout not lost
    assert record["error"]["type"] == "invalid_output" and problem in record["error"]["message"]
    assert http.get(f"/executions/{job_id}").status_code == 200
    page = http.get("/executions", params={"limit": 5})
    assert page.status_code == 200 and job_id in [item["execution_id"] for item in page.json()["items"]]
    assert (
        http.get("/dlq").json()["count"] == 0 or job_id not in http.get("/dlq").text
    )  # the user's, not ours
