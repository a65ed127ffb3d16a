"""Auth, tenancy, rate limiting and the bind guard, against a real server process (strict: real runsc)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandbox_server import SANDBOX_TESTS, strict_server

from tako_vm.testing import LocalServer

KEY_A = "key-team-a-0123456789"
KEY_A2 = "key-team-a-second-key"
KEY_B = "key-team-b-0123456789"
RATE_LIMIT = 40

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(
        tmp_path_factory,
        "shim-auth",
        api_auth_enabled=True,
        api_keys={KEY_A: "team-a", KEY_A2: "team-a", KEY_B: "team-b"},
        api_rate_limit_requests=RATE_LIMIT,
        api_rate_limit_window_seconds=60,
        api_rate_limit_enabled=True,  # STRICT_SETTINGS turn it off
    ) as running:
        yield running


def client(server: LocalServer, key: str | None = None, bearer: bool = False) -> httpx.Client:
    headers = {}
    if key:
        headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def test_missing_or_wrong_key_is_401_with_www_authenticate(server: LocalServer) -> None:
    for key in (None, "wrong-key-0123456789"):
        with client(server, key) as http:
            response = http.post("/execute/async", json={"code": "print(1)"})
            assert response.status_code == 401
            assert response.json()["detail"] == "Missing or invalid API key."
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.headers["X-Correlation-ID"]
    with client(server) as anonymous:
        assert anonymous.get("/health").status_code == 200  # exempt
        assert anonymous.get("/openapi.json").status_code == 200


def test_tenants_never_see_or_touch_each_others_jobs(server: LocalServer) -> None:
    with client(server, KEY_A) as a, client(server, KEY_A2, bearer=True) as a2, client(server, KEY_B) as b:
        job_id = a.post(
            "/execute/async", json={"code": "print('team a')", "idempotency_key": "shared-key-01"}
        ).json()["job_id"]
        record = a2.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 60}).json()
        assert record["stdout"] == "team a\n"  # another key of the same tenant sees it (Bearer form)
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", f"/executions/{job_id}"):
            assert b.get(path).status_code == 404, path
        assert b.post(f"/jobs/{job_id}/cancel").status_code == 404
        assert b.post(f"/jobs/{job_id}/rerun", json={}).status_code == 404
        assert b.post(f"/jobs/{job_id}/fork", json={"code": "print(2)"}).status_code == 404
        assert job_id not in {item["execution_id"] for item in b.get("/executions").json()["items"]}
        assert job_id in {item["execution_id"] for item in a.get("/executions").json()["items"]}
        # The same idempotency key in another tenant is a different job, not a replay or a conflict.
        other = b.post("/execute/async", json={"code": "print('team b')", "idempotency_key": "shared-key-01"})
        assert other.status_code == 200 and other.json()["job_id"] != job_id


def test_rate_limit_answers_429_with_retry_after(server: LocalServer) -> None:
    with client(server, KEY_B) as b, client(server, KEY_A) as a:
        statuses = [b.get("/pool/stats").status_code for _ in range(RATE_LIMIT + 5)]
        assert statuses.count(429) >= 5 and statuses[0] == 200
        limited = b.get("/pool/stats")
        assert limited.status_code == 429
        assert limited.json()["detail"] == "Rate limit exceeded. Try again later."
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert b.get("/health").status_code == 200  # exempt
        assert a.get("/pool/stats").status_code == 200  # buckets are per key


def test_non_loopback_bind_without_auth_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAKO_VM_")}
    env["TAKO_VM_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tako_shim", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "server_host: refusing to bind non-loopback address '0.0.0.0'" in result.stderr


def test_invalid_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "tako_vm.yaml"
    config.write_text("max_workers: 0\nmystery: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "tako_shim", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "max_workers" in result.stderr and "mystery: unknown key" in result.stderr


def test_strict_mode_without_a_working_runsc_refuses_to_start(tmp_path: Path) -> None:
    broken = tmp_path / "runsc"
    broken.write_text("#!/bin/sh\necho 'runsc: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAKO_VM_")}
    env.update({"TAKO_VM_RUNSC_PATH": str(broken), "TAKO_VM_DATA_DIR": str(tmp_path / "d")})
    result = subprocess.run(
        [sys.executable, "-m", "tako_shim", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "cannot start the local backend" in result.stderr and "runsc" in result.stderr
