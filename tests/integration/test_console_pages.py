"""The console's list filters, columns, one-execution details and the overview, as a user reaches them,
against a real server (local backend, real runsc, authentication on, two job types). Plain HTTP with the
console's cookie: these pages are server-rendered, so what the browser would show is the HTML served.
The browser tests (test_console_browser.py) cover login, live output, images, scripts and the buttons.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sandbox_server import SANDBOX_TESTS, strict_server

from tako_vm.testing import LocalServer

KEY = "console-pages-key-0123456789"
OTHER_KEY = "console-pages-other-0123456789"

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(
        tmp_path_factory,
        "pages",
        warm_pool_size=1,
        api_auth_enabled=True,
        api_keys={KEY: "team-a", OTHER_KEY: "team-b"},
        job_types=[{"name": "reports", "timeout": 20}],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def console(server: LocalServer) -> Iterator[httpx.Client]:
    """A client holding the console's session cookie, logged in through the login form."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        form = http.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None, form.text
        answer = http.post("/console/login", data={"api_key": KEY, "login_token": token.group(1)})
        assert answer.status_code == 303, answer.text
        yield http


@pytest.fixture(scope="module")
def jobs(server: LocalServer) -> dict[str, str]:
    """Three finished jobs of team-a (one per job type and status), one of team-b."""
    api = {"Authorization": f"Bearer {KEY}"}
    submitted = {
        "ok": {"code": "print('needle-alpha')\nx = 1\n"},
        "fail": {"code": "def boom():\n    return 1 / 0\nboom()\n"},
        "report": {"code": "print('report-beta')\n", "job_type": "reports"},
    }
    ids = {}
    for name, body in submitted.items():
        answer = httpx.post(f"{server.url}/execute/async", json=body, headers=api, timeout=30)
        assert answer.status_code == 200, answer.text
        ids[name] = answer.json()["job_id"]
    other = httpx.post(
        f"{server.url}/execute/async",
        json={"code": "print('needle-alpha from b')"},
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
        timeout=30,
    )
    ids["other"] = other.json()["job_id"]
    for name, job in ids.items():
        key = OTHER_KEY if name == "other" else KEY
        wait = {"wait": "true", "timeout": 60}
        result = httpx.get(
            f"{server.url}/jobs/{job}/result",
            params=wait,
            headers={"Authorization": f"Bearer {key}"},
            timeout=90,
        )
        assert result.json()["status"] in ("succeeded", "failed"), result.text
    return ids


def listed(console: httpx.Client, **query: str) -> list[str]:
    page = console.get("/console/executions", params=query)
    assert page.status_code == 200, page.text
    return re.findall(r'<tr data-id="([^"]+)"', page.text)


def test_each_filter_narrows_the_list_and_newest_come_first(
    console: httpx.Client, jobs: dict[str, str]
) -> None:
    everything = listed(console)
    assert everything == [jobs["report"], jobs["fail"], jobs["ok"]]  # newest first; team-b's job absent
    assert listed(console, status="failed") == [jobs["fail"]]
    assert listed(console, status="succeeded") == [jobs["report"], jobs["ok"]]
    assert listed(console, job_type="reports") == [jobs["report"]]
    assert listed(console, job_type="default", status="succeeded") == [jobs["ok"]]
    assert listed(console, q="needle-alpha") == [jobs["ok"]]  # text in the code; not the other tenant's
    assert listed(console, q="1 / 0") == [jobs["fail"]]
    now = datetime.now(UTC)
    hour_ago = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    soon = (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    assert listed(console, since=hour_ago) == everything
    assert listed(console, since=soon) == []
    assert listed(console, until=hour_ago) == []
    assert listed(console, since=hour_ago, until=soon, q="report-beta") == [jobs["report"]]


def test_the_list_has_the_issues_columns(console: httpx.Client, jobs: dict[str, str]) -> None:
    page = console.get("/console/executions").text
    headers = re.findall(r"<th>([^<]+)</th>", page)
    assert headers[:6] == ["Status", "Started", "Duration", "Job type", "Code", "Exit"]
    row = re.search(rf'<tr data-id="{jobs["fail"]}">(.*?)</tr>', page, re.S)
    assert row is not None
    cells = [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    ]
    status, started, duration, job_type, code, exit_code = cells[:6]
    assert status == "failed" and 'class="badge failed"' in row.group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", started), started
    assert re.fullmatch(r"[\d.]+ (ms|s)", duration), duration
    assert (job_type, code, exit_code) == ("default", "def boom():", "1")


def test_one_failed_execution_shows_error_traceback_timing_and_no_cancel(
    console: httpx.Client, jobs: dict[str, str]
) -> None:
    page = console.get(f"/console/executions/{jobs['fail']}")
    assert page.status_code == 200
    text = page.text
    error = re.search(r'id="error"><strong>([^<]+)</strong>', text)
    assert error is not None and error.group(1) == "division_error"
    traceback = re.search(r'<pre class="out err" id="traceback">(.*?)</pre>', text, re.S)
    assert traceback is not None and "ZeroDivisionError" in traceback.group(1)
    stderr = re.search(r'<pre id="stderr" class="out err">(.*?)</pre>', text, re.S)
    assert stderr is not None and "in boom" in stderr.group(1)  # the traceback with its frame
    timing = re.search(r"<th>Timing</th><td>(.*?)</td>", text)
    assert timing is not None and "run " in timing.group(1) and "total " in timing.group(1), text
    assert 'id="rerun"' in text and 'id="cancel"' not in text  # finished: rerun, nothing to cancel
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_cancel_button_cancels_a_running_job(server: LocalServer, console: httpx.Client) -> None:
    api = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(
        f"{server.url}/execute/async", json={"code": "import time\ntime.sleep(30)\n"}, headers=api, timeout=30
    )
    job = answer.json()["job_id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/jobs/{job}", headers=api).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    page = console.get(f"/console/executions/{job}").text
    assert 'id="cancel"' in page and 'id="rerun"' not in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    assert console.post(f"/console/executions/{job}/cancel", data={}).status_code == 403  # no token
    assert httpx.get(f"{server.url}/jobs/{job}", headers=api).json()["status"] == "running"
    cancelled = console.post(f"/console/executions/{job}/cancel", data={"csrf": csrf.group(1)})
    assert cancelled.status_code == 303
    result = httpx.get(
        f"{server.url}/jobs/{job}/result", params={"wait": "true", "timeout": 30}, headers=api, timeout=60
    )
    assert result.json()["status"] == "cancelled"


def test_the_overview_shows_queue_running_pool_and_the_last_hours_failure_rate(
    console: httpx.Client, jobs: dict[str, str]
) -> None:
    page = console.get("/console/overview").text
    assert re.search(r'id="queue-depth">\d+</span> queued', page)
    assert re.search(r'id="running">\d+</span> running', page)
    rate = re.search(r'id="failure-rate">(\d+) %</span>', page)
    assert rate is not None and 0 < int(rate.group(1)) < 100  # at least one failed, one succeeded
    assert re.search(r'id="warm-pool">\d+ of 1 sandboxes ready', page), "the warm pool's state"
    assert len(re.findall(r"<rect ", page)) == 120  # the per-minute chart: 60 minutes x 2 bars
