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


# -- API-server faults for the operator tests (kmock) ------------------------------------------------


def inject(kube: Any, criteria: Any, faults: list[tuple[int, dict[str, Any]]]) -> list[Any]:
    """Answer the first ``len(faults)`` requests matching ``criteria`` with the faults (status, body),
    then step aside so that the emulator serves as usual. Returns the requests that got a fault.

    Stepping aside returns ``NotImplemented``, never ``None``: kmock 0.8 copies the status of a
    returned ``kmock.Response`` onto the reaction itself (``object.__setattr__`` on its frozen
    Response), so a reaction that later returns None still answers with that status and an empty
    body. That kmock bug made every later watch request fail with a bodiless 410 or 500."""
    import kmock  # the operator tests' dependency, not the local-mode tests'

    served: list[Any] = []

    def react(request: Any) -> Any:
        if len(served) >= len(faults):
            return NotImplemented  # kmock: "not this reaction", try the next one (the emulator)
        status, body = faults[len(served)]
        served.append(request)
        return kmock.Response(status=status, payload=body)

    async def register() -> None:
        kube._emulator[criteria].override << react  # kmock's DSL on the harness's emulator

    kube._run(register())
    return served


def api_status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` error body, as the API server sends it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
