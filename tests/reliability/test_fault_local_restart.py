"""The local server SIGKILLed mid-job and restarted on the same data directory (real runsc sandboxes).

Promise (docs/api.md): queued and running jobs survive; nothing is lost, nothing gets two terminal
records, idempotency keys still return the same jobs. A job that was RUNNING restarts from the
beginning (at-least-once execution, exactly-once record). The sandbox the killed server left behind
must not keep running on its own.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from reliability_support import poll, sandbox_processes, wait_result

from tako_vm.testing import local_server

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SETTINGS = {"security_mode": "strict", "max_workers": 1, "api_rate_limit_enabled": False}
LONG_CODE = "import time\nprint('long started', flush=True)\ntime.sleep(6)\nprint('long done')"


def history_rows(data_dir: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(data_dir / "state" / "tako_vm.sqlite3") as db:
        return db.execute("SELECT job_id, status, idempotency_key FROM jobs ORDER BY seq").fetchall()


def test_sigkill_mid_job_then_restart_loses_nothing_and_records_each_job_once(
    tmp_path: Path, runsc_path: str, http_factory: Callable[[str], httpx.Client]
) -> None:
    bodies = [{"code": LONG_CODE, "idempotency_key": "restart-long-0001"}] + [
        {"code": f"print({n} * 7)", "idempotency_key": f"restart-quick-{n:04d}"} for n in range(4)
    ]
    with local_server(tmp_path, SETTINGS, env={"PATH": runsc_path}) as first:
        http = http_factory(first.url)
        ids = [http.post("/execute/async", json=body).json()["job_id"] for body in bodies]
        poll(lambda: http.get(f"/jobs/{ids[0]}").json()["status"] == "running", 30, "the long job to run")
        assert http.get(f"/jobs/{ids[1]}").json()["status"] == "pending"  # one worker: the rest queue
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)

    with local_server(tmp_path, SETTINGS, env={"PATH": runsc_path}) as second:
        http = http_factory(second.url)
        replayed = [http.post("/execute/async", json=body).json()["job_id"] for body in bodies]
        assert replayed == ids, "idempotency keys must return the same jobs after a restart"
        records = [wait_result(http, job_id) for job_id in ids]

    assert [r["status"] for r in records] == ["succeeded"] * 5
    assert records[0]["stdout"] == "long started\nlong done\n"  # one complete run in the record
    assert [r["stdout"] for r in records[1:]] == [f"{n * 7}\n" for n in range(4)]
    rows = history_rows(tmp_path)
    assert sorted(row[0] for row in rows) == sorted(ids), "no job lost, none duplicated"
    assert all(row[1] == "succeeded" for row in rows)


def test_the_killed_servers_sandbox_does_not_outlive_the_restart(
    tmp_path: Path, runsc_path: str, http_factory: Callable[[str], httpx.Client]
) -> None:
    """No orphans: after a restart, the sandbox the dead server started must be gone (the job reruns
    in a fresh sandbox), not keep burning CPU until its in-sandbox deadline."""
    spin = "print('spinning', flush=True)\nwhile True:\n    pass"
    with local_server(tmp_path, {**SETTINGS, "max_timeout": 60}, env={"PATH": runsc_path}) as first:
        http = http_factory(first.url)
        job_id = http.post("/execute/async", json={"code": spin, "timeout": 60}).json()["job_id"]
        poll(lambda: http.get(f"/jobs/{job_id}").json()["status"] == "running", 30, "the job to run")
        marker = str(tmp_path / "state")  # every runsc process of this server names its state dir
        old = poll(lambda: sandbox_processes(marker), 30, "the server's sandbox processes")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)

    with local_server(tmp_path, {**SETTINGS, "max_timeout": 60}, env={"PATH": runsc_path}) as second:
        http = http_factory(second.url)
        time.sleep(3)
        survivors = [args for pid, args in sandbox_processes(marker).items() if old.get(pid) == args]
        http.post(f"/jobs/{job_id}/cancel")
        assert wait_result(http, job_id)["status"] == "cancelled"
    assert survivors == [], f"sandbox of the killed server still running after the restart: {survivors}"
