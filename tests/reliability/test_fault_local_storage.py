"""Storage faults in local mode, injected for real against a running server process:

- SQLite locked: another connection holds ``BEGIN EXCLUSIVE`` on the server's own database file
  (longer than SQLite's 5 s busy timeout), as a backup tool or a second server on the same data
  directory would.
- Disk full: the server's data directory is a tiny tmpfs (``mount -t tmpfs -o size=...``; needs root,
  skipped saying so otherwise), filled to the last byte by a filler file.

Promises: a clear error to the client (never a bare 500), history that reads back intact and passes
``PRAGMA integrity_check`` afterwards, and a server that recovers by itself once the fault is gone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import wait_result

from tako_vm.testing import LocalServer, local_server

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SETTINGS = {"security_mode": "strict", "max_workers": 1, "api_rate_limit_enabled": False}


def database(server: LocalServer) -> Path:
    return server.data_dir / "state" / "tako_vm.sqlite3"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on ``path`` from another connection until the block ends."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        result: str = db.execute("PRAGMA integrity_check").fetchone()[0]
        return result


def history(http: httpx.Client) -> dict[str, dict[str, Any]]:
    items = http.get("/executions", params={"limit": 1000, "view": "full"}).json()["items"]
    return {item["execution_id"]: item for item in items}


@pytest.fixture
def server(tmp_path: Path, runsc_path: str) -> Iterator[LocalServer]:
    with local_server(tmp_path, SETTINGS, env={"PATH": runsc_path}) as running:
        yield running


@pytest.fixture
def http(server: LocalServer, http_factory: Callable[[str], httpx.Client]) -> httpx.Client:
    return http_factory(server.url)


# -- SQLite locked ---------------------------------------------------------------------------------


def test_history_stays_readable_and_intact_while_the_database_is_locked(
    server: LocalServer, http: httpx.Client
) -> None:
    done = http.post("/execute/async", json={"code": "print('before the lock')"}).json()["job_id"]
    before = wait_result(http, done)
    with exclusive_lock(database(server)):
        during = http.get(f"/jobs/{done}/result")  # WAL: readers are not blocked by the writer lock
        listing = http.get("/executions")
    assert during.status_code == 200 and during.json() == before
    assert listing.status_code == 200 and done in {i["execution_id"] for i in listing.json()["items"]}
    after = http.post("/execute/async", json={"code": "print('after the lock')"}).json()["job_id"]
    assert wait_result(http, after)["stdout"] == "after the lock\n"
    assert wait_result(http, done) == before
    assert integrity(database(server)) == "ok"


def test_a_submission_while_the_database_is_locked_gets_a_clear_503(
    server: LocalServer, http: httpx.Client
) -> None:
    with exclusive_lock(database(server)):
        response = http.post("/execute/async", json={"code": "print(1)"})
    assert response.status_code == 503, response.text
    assert "database" in response.json()["detail"].lower()
    assert integrity(database(server)) == "ok"


def test_a_job_finishing_during_a_long_lock_keeps_its_real_outcome_and_the_worker_survives(
    server: LocalServer, http: httpx.Client
) -> None:
    job = http.post("/execute/async", json={"code": "import time\ntime.sleep(1)\nprint('real result')"})
    job_id = job.json()["job_id"]
    time.sleep(0.3)
    with exclusive_lock(database(server)):
        time.sleep(14)  # the job ends (~2 s) and both terminal writes time out (5 s busy timeout each)
    response = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 20})
    assert response.status_code == 200, f"job never finished: {response.text}"
    record = response.json()
    assert (record["status"], record["stdout"]) == ("succeeded", "real result\n"), record
    follow_up = http.post("/execute/async", json={"code": "print('still working')"}).json()["job_id"]
    assert wait_result(http, follow_up, timeout=30)["stdout"] == "still working\n"
    assert http.get("/health").json()["status"] == "healthy"


# -- disk full -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (needs root and mount rights; skipped, saying so, where they are missing)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> Path:
    """Write zeros to ``path/filler`` until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0")
    return filler


@contextlib.contextmanager
def full_disk_server(
    tiny_disk: Path, runsc_path: str, http_factory: Callable[[str], httpx.Client]
) -> Iterator[tuple[LocalServer, httpx.Client, dict[str, dict[str, Any]], Path]]:
    """A server on the tiny disk with three finished jobs, then the disk filled to the last byte."""
    with local_server(tiny_disk, SETTINGS, env={"PATH": runsc_path}) as server:
        http = http_factory(server.url)
        kept = [http.post("/execute/async", json={"code": f"print({n})"}).json()["job_id"] for n in range(3)]
        for job_id in kept:
            wait_result(http, job_id)
        before = history(http)
        filler = fill(tiny_disk)
        assert os.statvfs(tiny_disk).f_bavail == 0
        yield server, http, before, filler


def test_disk_full_keeps_history_intact_and_the_server_recovers_by_itself(
    tiny_disk: Path, runsc_path: str, http_factory: Callable[[str], httpx.Client]
) -> None:
    with full_disk_server(tiny_disk, runsc_path, http_factory) as (server, http, before, filler):
        attempts = [http.post("/execute/async", json={"code": f"print('full {n}')"}) for n in range(5)]
        assert all(r.status_code in (200, 500, 503) for r in attempts), [r.text for r in attempts]
        for response in attempts:  # a job accepted with a full disk must still end (not hang)
            if response.status_code == 200:
                assert wait_result(http, response.json()["job_id"], timeout=60)["status"] in {
                    "succeeded",
                    "failed",
                }
        assert http.get("/executions").status_code == 200  # reads keep working on a full disk
        filler.unlink()
        recovered = http.post("/execute/async", json={"code": "print('space again')"})
        assert recovered.status_code == 200, recovered.text
        assert wait_result(http, recovered.json()["job_id"], timeout=60)["stdout"] == "space again\n"
        after = history(http)
        assert {job_id: after[job_id] for job_id in before} == before, "finished records changed"
        assert http.get("/health").json()["status"] == "healthy"
        assert server.process.poll() is None
    assert integrity(tiny_disk / "state" / "tako_vm.sqlite3") == "ok"


def test_disk_full_submission_gets_a_clear_503(
    tiny_disk: Path, runsc_path: str, http_factory: Callable[[str], httpx.Client]
) -> None:
    with full_disk_server(tiny_disk, runsc_path, http_factory) as (_server, http, _before, filler):
        response = http.post("/execute/async", json={"code": "print('no space')"})
        filler.unlink()
    assert response.status_code == 503, response.text
    assert "space" in response.json()["detail"].lower() or "full" in response.json()["detail"].lower()


# -- client disconnect during a long-poll ----------------------------------------------------------


def test_clients_vanishing_mid_long_poll_leave_the_server_healthy(
    server: LocalServer, http: httpx.Client
) -> None:
    job_id = http.post("/execute/async", json={"code": "import time\ntime.sleep(3)\nprint('done')"}).json()[
        "job_id"
    ]

    def abandon() -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.get(
                f"{server.url}/jobs/{job_id}/result",
                params={"wait": "true", "timeout": 60},
                timeout=0.5,  # the client gives up and closes its socket mid-wait
            )

    threads = [threading.Thread(target=abandon) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = wait_result(http, job_id)
    assert (record["status"], record["stdout"]) == ("succeeded", "done\n")
    assert http.get("/health").json()["status"] == "healthy"
    assert http.get("/pool/stats").status_code == 200
    assert "Traceback" not in server.log(), server.log()[-3000:]
