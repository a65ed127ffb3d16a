"""Hostile HTTP input against a real server process: malformed bytes, absurd numbers, deep nesting,
oversized headers, path tricks. The promise: a 4xx naming the problem, never a 500, never a crash.

The first two tests pin inputs the fuzz pass (tests/fuzz/test_fuzz_rest_api.py) found answered with a
500 (a non-UTF-8 body; an offset beyond SQLite's INTEGER); both were fixed in the shim the same day.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from tako_shim.backends.local.backend import LocalBackend
from tako_shim.config import Settings
from tako_shim.errors import NotFound
from tako_vm.testing import LocalServer

pytestmark = pytest.mark.sandbox
JSON = {"Content-Type": "application/json"}


def assert_contract_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "correlation_id"} and body["detail"]
    assert response.headers["X-Correlation-ID"] == body["correlation_id"]


def test_non_utf8_body_is_a_422(http: httpx.Client) -> None:
    response = http.post("/execute/async", content=b'{"code": "print(1)\xff"}', headers=JSON)
    assert_contract_error(response, 422)


def test_huge_offset_is_a_422(http: httpx.Client) -> None:
    response = http.get("/executions", params={"offset": str(2**63)})
    assert response.status_code == 422, response.text
    assert "offset" in response.text


@pytest.mark.parametrize(
    ("name", "body", "mentions"),
    [
        (
            "5,000 nested objects",
            b'{"code":"print(1)","input_data":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
            "recursion",
        ),
        (
            "100,000 nested lists",
            b'{"code":"print(1)","input_data":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            "recursion",
        ),
        ("a 5,000-digit integer", b'{"code":"print(1)","timeout":' + b"9" * 5000 + b"}", "out of range"),
        ("an infinite float", b'{"code":"print(1)","timeout":1e400}', "finite"),
        ("a lone surrogate escape", b'{"code":"print(1) # \\ud800"}', "json_invalid"),
        ("an array instead of an object", b'[{"code":"print(1)"}]', "model_type"),
        (
            "input_data over 1 MB",
            b'{"code":"print(1)","input_data":{"a":"' + b"x" * 1_048_600 + b'"}}',
            "1MB",
        ),
        ("51 requirements", b'{"code":"print(1)","requirements":[' + b",".join([b'"a"'] * 51) + b"]}", "50"),
        (
            "an idempotency key with path characters",
            b'{"code":"print(1)","idempotency_key":"../../etc/x"}',
            "pattern",
        ),
    ],
)
def test_malformed_and_absurd_json_is_a_422_naming_the_problem(
    http: httpx.Client, name: str, body: bytes, mentions: str
) -> None:
    response = http.post("/execute/async", content=body, headers=JSON)
    assert_contract_error(response, 422)
    assert mentions in response.text, response.text[:500]


def test_oversized_request_line_and_headers_are_refused_before_any_handler(
    http: httpx.Client, server: LocalServer
) -> None:
    assert http.get("/jobs/" + "a" * 10_000).status_code == 400
    assert http.get("/pool/stats", headers={"X-Padding": "a" * 100_000}).status_code == 400
    assert http.get("/health").status_code == 200 and server.process.poll() is None


@pytest.mark.parametrize(
    "name", ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", "%2Fetc%2Fpasswd", "a%00b", "..%5C..%5Cwindows"]
)
def test_artifact_names_cannot_escape_the_jobs_output(http: httpx.Client, name: str) -> None:
    submitted = http.post("/execute/async", json={"code": "print(1)"})
    assert submitted.status_code == 200, submitted.text
    response = http.get(f"/jobs/{submitted.json()['job_id']}/artifacts/{name}")
    # 400 from the name guard itself, not the 404 any unknown name gets: this fails if the guard goes.
    assert_contract_error(response, 400)
    assert response.json()["detail"] == "Invalid artifact path"
    assert "root:" not in response.text


def test_a_hostile_correlation_id_is_replaced_not_echoed(http: httpx.Client) -> None:
    for hostile in ("a" * 129, "has space", "tab\there", "ünïcode"):
        response = http.get("/pool/stats", headers=[(b"X-Correlation-ID", hostile.encode())])
        assert response.status_code == 200
        echoed = response.headers["X-Correlation-ID"]
        assert echoed != hostile and uuid.UUID(echoed)
    ok = http.get("/pool/stats", headers={"X-Correlation-ID": "trace-123"})
    assert ok.headers["X-Correlation-ID"] == "trace-123"


def test_responses_carry_security_headers_and_no_version_banner(http: httpx.Client) -> None:
    for response in (
        http.get("/pool/stats"),
        http.get("/no/such/route"),
        http.post("/execute", content=b"{"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Server"] == "tako-vm"
        assert "Python" not in response.headers.get("Server", "") and "aiohttp" not in response.text


async def test_long_polls_on_unknown_ids_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runsc_path: str
) -> None:
    """In-process (it inspects the backend's wake-up table): 1,000 long-polls on ids that do not exist
    must not leave 1,000 entries behind (a memory leak any client could drive)."""
    monkeypatch.setenv("PATH", runsc_path)
    backend = LocalBackend(Settings(data_dir=tmp_path, security_mode="strict", max_workers=1))
    await backend.start()
    try:
        for _ in range(1000):
            with pytest.raises(NotFound):
                await backend.wait_for("default", str(uuid.uuid4()), 1)
        await asyncio.sleep(0)
        assert len(backend._done) == 0, f"{len(backend._done)} wake-up events left behind"
    finally:
        await backend.close()
