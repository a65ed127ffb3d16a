"""Load and durability of the local backend, with real runsc sandboxes in a real server process."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from sandbox_server import RUNSC_PATH, needs_runsc

from tako_vm.testing import local_server

TERMINAL = {"succeeded", "failed", "timeout", "oom", "cancelled"}

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.slow,
    needs_runsc,
]


@pytest.mark.timeout(420)
async def test_200_concurrent_jobs_with_4_workers_all_finish_exactly_once(tmp_path: Path) -> None:
    settings = {
        "security_mode": "strict",
        "max_workers": 4,
        "max_queue_size": 200,
        "api_rate_limit_enabled": False,
    }
    with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as server:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=server.url, timeout=180, limits=limits) as http:
            started = time.monotonic()

            async def submit(i: int) -> str:
                response = await http.post("/execute/async", json={"code": f"print('job-{i}')"})
                assert response.status_code == 200, response.text
                job_id: str = response.json()["job_id"]
                return job_id

            job_ids = await asyncio.gather(*(submit(i) for i in range(200)))
            submitted = time.monotonic() - started
            stats = (await http.get("/pool/stats")).json()
            assert stats["running"] <= 4 and stats["max_workers"] == 4

            async def result(job_id: str) -> dict[str, object]:
                response = await http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 180})
                assert response.status_code == 200, response.text
                record: dict[str, object] = response.json()
                return record

            records = await asyncio.gather(*(result(j) for j in job_ids))
            elapsed = time.monotonic() - started
            history = (await http.get("/executions", params={"limit": 1000})).json()

    assert len(set(job_ids)) == 200
    assert [r["status"] for r in records] == ["succeeded"] * 200, {str(r["status"]) for r in records}
    assert [r["stdout"] for r in records] == [f"job-{i}\n" for i in range(200)]
    assert history["count"] == 200 and not history["has_more"]  # none duplicated, none lost
    assert sorted(i["execution_id"] for i in history["items"]) == sorted(job_ids)
    print(f"\n200 jobs, 4 workers: submitted in {submitted:.2f}s, all terminal after {elapsed:.1f}s")


@pytest.mark.timeout(180)
def test_queued_and_running_jobs_survive_a_server_restart(tmp_path: Path) -> None:
    settings = {"security_mode": "strict", "max_workers": 1, "api_rate_limit_enabled": False}
    code = "import time\ntime.sleep(2)\nprint('survived')"
    with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            job_ids = [http.post("/execute/async", json={"code": code}).json()["job_id"] for _ in range(3)]
            time.sleep(1.0)  # the first is running, two are queued
            assert http.get(f"/jobs/{job_ids[0]}").json()["status"] == "running"
            assert http.get(f"/jobs/{job_ids[2]}").json() | {"created_at": None} == {
                "job_id": job_ids[2],
                "status": "pending",
                "created_at": None,
                "duration_ms": None,
                "queue_position": 2,
                "webhook": None,  # no webhook_url: no delivery (docs/api.md)
            }
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=20)
    with (
        local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as restarted,
        httpx.Client(base_url=restarted.url, timeout=60) as http,
    ):
        for job_id in job_ids:
            record = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 60}).json()
            assert record["status"] == "succeeded", record
            assert record["stdout"] == "survived\n" and record["error"] is None
