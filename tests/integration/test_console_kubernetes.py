"""The web console on the kubernetes backend: real shim app (aiohttp) -> kmock API -> real operator (kopf),
with the conftest's `FakeKubelet` finishing Pods (kmock has no kubelet). The browser tests
(test_console_browser.py) run on the local backend; this proves the same pages and buttons work
over the other implementation of the backend interface."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from kube_harness import KubeHarness
from operator_support import FakeKubelet

from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import KubernetesOptions, Settings
from tako_shim.http.app import create_app

pytestmark = [pytest.mark.timeout(90)]


async def test_console_pages_and_rerun_work_on_the_kubernetes_backend(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    run_operator()
    settings = Settings(
        backend="kubernetes",
        api_rate_limit_enabled=False,
        kubernetes=KubernetesOptions(namespace=kube.namespace, kubeconfig=str(kube.kubeconfig(tmp_path))),
        data_dir=tmp_path / "unused-data-dir",
    )
    assert settings.console_on()  # loopback bind: on by default
    backend = KubernetesBackend(settings)
    server = TestServer(create_app(settings, backend), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
            submitted = await http.post("/execute/async", json={"code": "print('<b>hi</b>')"})
            job_id = submitted.json()["job_id"]
            pod = await asyncio.to_thread(lambda: str(kubelet.wait_pod(job_id)["metadata"]["name"]))
            await asyncio.to_thread(kubelet.succeed, pod, "<b>hi</b>\n", {"answer": 42})
            done = await http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 30})
            assert done.json()["status"] == "succeeded"

            listing = await http.get("/console/executions")
            assert listing.status_code == 200 and f'data-id="{job_id}"' in listing.text
            page = await http.get(f"/console/executions/{job_id}")
            assert page.status_code == 200
            assert "&lt;b&gt;hi&lt;/b&gt;" in page.text and "<b>hi</b>" not in page.text
            assert "Content-Security-Policy" in page.headers
            overview = await http.get("/console/overview")
            assert overview.status_code == 200 and 'id="running"' in overview.text

            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None
            rerun = await http.post(f"/console/executions/{job_id}/rerun", data={"csrf": csrf.group(1)})
            assert rerun.status_code == 303
            child = rerun.headers["Location"].rsplit("/", 1)[-1]
            record = (await http.get(f"/executions/{child}", params={"view": "full"})).json()
            assert (record["parent_execution_id"], record["relationship"]) == (job_id, "rerun")
            forged = await http.post(f"/console/executions/{job_id}/rerun", data={"csrf": "forged"})
            assert forged.status_code == 403
    finally:
        await server.close()


async def test_a_running_jobs_console_page_streams_its_events_on_the_kubernetes_backend(
    kube: KubeHarness, run_operator: Any, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    """The console's live part on the kubernetes backend: a running job's page points its EventSource at
    /console/executions/{id}/events, which serves the job's SSE stream (status, then the result with
    its stdout) for the console's tenant."""
    run_operator()
    settings = Settings(
        backend="kubernetes",
        api_rate_limit_enabled=False,
        kubernetes=KubernetesOptions(namespace=kube.namespace, kubeconfig=str(kube.kubeconfig(tmp_path))),
        data_dir=tmp_path / "unused-data-dir",
    )
    backend = KubernetesBackend(settings)
    server = TestServer(create_app(settings, backend), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
            job_id = (await http.post("/execute/async", json={"code": "print('live')"})).json()["job_id"]
            pod = await asyncio.to_thread(lambda: str(kubelet.wait_pod(job_id)["metadata"]["name"]))
            await asyncio.to_thread(kubelet.run, pod)
            for _ in range(100):
                page = await http.get(f"/console/executions/{job_id}")
                if 'data-status="running"' in page.text:
                    break
                await asyncio.sleep(0.1)
            url = f"/console/executions/{job_id}/events"
            assert f'data-events="{url}"' in page.text, page.text

            async def read() -> list[tuple[str, str]]:
                found: list[tuple[str, str]] = []
                async with http.stream("GET", url) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    event = ""
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            found.append((event, line[6:]))
                            if event == "result":
                                break
                return found

            reading = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(kubelet.succeed, pod, "live\n")
            events = await asyncio.wait_for(reading, 30)
            kinds = [kind for kind, _ in events]
            assert kinds[0] == "status" and kinds[-1] == "result", kinds
            assert json.loads(events[-1][1])["stdout"] == "live\n"
    finally:
        await server.close()
