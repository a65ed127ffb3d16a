"""The executions list pages: 25 newest first, then "next" to the older ones, and "previous" back.

A real app and local backend (SQLite) with the queue tests' fake sandbox runner, so 30 jobs take
milliseconds; the filters and columns are checked against real runsc in
tests/integration/test_console_pages.py.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
from aiohttp.test_utils import TestServer
from test_shim_queue import FakeSandboxRunner, make_backend

from tako_shim.http.app import create_app
from tako_shim.http.console import views


async def test_the_list_pages_newest_first(tmp_path: Path) -> None:
    runner = FakeSandboxRunner()
    runner.gate.set()
    backend = make_backend(tmp_path, runner, max_workers=2, api_rate_limit_enabled=False)
    server = TestServer(create_app(backend.settings, backend), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10) as http:
            ids = []
            for n in range(views.PAGE_SIZE + 5):
                ids.append((await http.post("/execute/async", json={"code": f"print({n})"})).json()["job_id"])
            first = await http.get("/console/executions")
            assert re.findall(r'<tr data-id="([^"]+)"', first.text) == ids[::-1][: views.PAGE_SIZE]
            older = re.search(r'href="([^"]*page=2[^"]*)"', first.text)
            assert older is not None and "page=0" not in first.text
            second = await http.get(html.unescape(older.group(1)))
            assert re.findall(r'<tr data-id="([^"]+)"', second.text) == ids[::-1][views.PAGE_SIZE :]
            newer = re.search(r'<a href="([^"]*)" rel="prev">', second.text)
            assert newer is not None, "a link back to the newer page"
            back = await http.get(html.unescape(newer.group(1)))
            assert re.findall(r'<tr data-id="([^"]+)"', back.text) == ids[::-1][: views.PAGE_SIZE]
            assert 'rel="next"' not in second.text, "no page after the last"
    finally:
        await server.close()
