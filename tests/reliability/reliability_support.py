"""Helpers shared by the fault-injection tests (a module, not a conftest, so tests can import it)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def wait_result(http: httpx.Client, job_id: str, timeout: int = 90) -> dict[str, Any]:
    response = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": timeout})
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def sandbox_processes(marker: str) -> dict[int, str]:
    """Live processes whose command line mentions ``marker`` (e.g. a server's data directory), by pid."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    found: dict[int, str] = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if marker in args and not args.startswith("ps "):
            found[int(pid)] = args
    return found
