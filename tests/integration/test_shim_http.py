"""The REST contract over HTTP against a real server process (local backend, strict mode: real runsc)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_server import RUNSC_PATH, SANDBOX_TESTS, strict_server

from tako_vm.testing import LocalServer, local_server

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(tmp_path_factory, "shim-http", allow_runtime_requirements=False) as running:
        yield running


@pytest.fixture
def http(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def submit(http: httpx.Client, **body: Any) -> str:
    response = http.post("/execute/async", json=body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def wait(http: httpx.Client, job_id: str, view: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"wait": "true", "timeout": 60}
    if view:
        params["view"] = view
    response = http.get(f"/jobs/{job_id}/result", params=params)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


BIG = "x" * (2 * 1024 * 1024 + 1)


@pytest.mark.parametrize(
    ("name", "content", "status", "detail_kind", "mentions"),
    [
        ("malformed JSON", b'{"code": "print(1)"', 422, list, "json_invalid"),
        ("not an object", b'["print(1)"]', 422, list, "model_type"),
        ("unknown field", {"code": "print(1)", "extra_field": 1}, 422, list, "extra_field"),
        ("blank code", {"code": "   \n\t"}, 422, list, "Code cannot be empty"),
        ("100,001-char code", {"code": "#" * 100_001}, 422, list, "code"),
        ("129-char key", {"code": "print(1)", "idempotency_key": "k" * 129}, 422, list, "idempotency_key"),
        ("255-char key", {"code": "print(1)", "idempotency_key": "k" * 255}, 422, list, "idempotency_key"),
        ("unknown job type", {"code": "print(1)", "job_type": "no-such-type"}, 422, str, "job_type"),
        ("timeout above max", {"code": "print(1)", "timeout": 301}, 422, str, "max_timeout"),
        ("timeout above schema", {"code": "print(1)", "timeout": 86401}, 422, list, "timeout"),
        ("requirements disabled", {"code": "print(1)", "requirements": ["six"]}, 422, str, "requirements"),
        ("2 MiB+ body", {"code": BIG}, 413, str, "Payload too large"),
    ],
)
@pytest.mark.parametrize("route", ["/execute/async", "/execute"])
def test_bad_input_gets_the_contract_error_never_a_500(
    http: httpx.Client, route: str, name: str, content: Any, status: int, detail_kind: type, mentions: str
) -> None:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = http.post(route, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == status, (name, response.text[:500])
    body = response.json()
    assert isinstance(body["detail"], detail_kind), body
    assert mentions in json.dumps(body["detail"]), body
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (b'{"code": "\xff\xfe print(1)"}', "not UTF-8"),
        (b'{"code": "\\ud800 print(1)"}', "json_invalid"),  # a lone surrogate escape
        (b'{"code": "print(1)", "timeout": 1e400}', "finite"),
        (b"", "json_invalid"),
    ],
)
def test_hostile_bodies_are_client_errors(http: httpx.Client, raw: bytes, mentions: str) -> None:
    response = http.post("/execute/async", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, list) and mentions in json.dumps(detail), detail


def test_a_big_integer_in_input_data_is_valid_json_and_runs(http: httpx.Client) -> None:
    code = "import json;print(json.load(open('/input/data.json'))['n'] + 1)"
    raw = json.dumps({"code": code, "input_data": {"n": 123456789012345678901234567890}}).encode()
    response = http.post("/execute/async", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    record = wait(http, response.json()["job_id"], view="full")
    assert record["status"] == "succeeded" and record["stdout"] == "123456789012345678901234567891\n", record


def test_huge_offset_is_a_422(http: httpx.Client) -> None:
    response = http.get("/executions", params={"offset": 2**64})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "offset"]
    assert http.get("/executions", params={"offset": 2**63 - 1}).json()["items"] == []


def test_chunked_body_over_the_cap_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(5):
            yield b"#" * (512 * 1024)
        yield b'"}'

    response = http.post("/execute/async", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"] == "Payload too large. Maximum allowed size is 2097152 bytes."


def test_bad_query_parameters_are_422_and_unknown_ids_404(http: httpx.Client) -> None:
    assert http.get("/jobs/nope/result", params={"wait": "true", "timeout": 301}).status_code == 422
    assert http.get("/executions", params={"limit": 0}).status_code == 422
    assert http.get("/executions", params={"offset": -1}).status_code == 422
    missing = http.get("/jobs/does-not-exist")
    assert missing.status_code == 404 and missing.json()["detail"] == "Job not found"
    assert http.get("/executions/does-not-exist").json()["detail"] == "Execution not found"
    assert http.post("/jobs/does-not-exist/cancel").json()["detail"] == "Job not found or already completed"
    unknown_route = http.get("/no/such/route")
    assert unknown_route.status_code == 404 and unknown_route.json()["detail"] == "Not Found"


def test_headers_correlation_id_echo_and_security_headers(http: httpx.Client) -> None:
    response = http.get("/pool/stats", headers={"X-Correlation-ID": "trace-abc-123"})
    assert response.headers["X-Correlation-ID"] == "trace-abc-123"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "aiohttp" not in response.headers.get("Server", "")
    fresh = http.get("/pool/stats")
    assert len(fresh.headers["X-Correlation-ID"]) == 36
    assert set(fresh.json()) == {"pending", "running", "max_workers", "max_queue_size"}
    assert fresh.json()["max_workers"] == 2


def test_sync_execute_returns_output_and_failures_as_200(http: httpx.Client) -> None:
    ok = http.post(
        "/execute",
        json={
            "code": "import json\nd=json.load(open('/input/data.json'))\nprint(d['n'])\n"
            "json.dump({'double': d['n']*2}, open('/output/result.json','w'))",
            "input_data": {"n": 21},
        },
    ).json()
    assert ok["success"] is True and ok["output"] == {"double": 42} and ok["stdout"] == "21\n"
    assert ok["runtime"] == "runsc" and ok["execution_id"]
    failed = http.post("/execute", json={"code": "raise ValueError('boom')"})
    assert failed.status_code == 200
    body = failed.json()
    assert body["success"] is False and body["exit_code"] != 0 and "boom" in body["stderr"]
    record = http.get(f"/executions/{body['execution_id']}").json()
    assert record["status"] == "failed" and record["error"]["type"] in {"value_error", "runtime_error"}


def test_status_result_views_and_history(http: httpx.Client) -> None:
    job_id = submit(http, code="print('hello')")
    status = http.get(f"/jobs/{job_id}").json()
    assert status["status"] in {"pending", "running", "succeeded"} and status["job_id"] == job_id
    slim = wait(http, job_id)
    assert slim["status"] == "succeeded" and slim["stdout"] == "hello\n" and "artifacts" not in slim
    full = wait(http, job_id, view="full")
    assert full["code_hash"] and full["stdout_truncated"] is False and full["job_ref"] == "default@latest"
    page = http.get("/executions", params={"status": "succeeded", "limit": 1}).json()
    assert set(page) == {"items", "limit", "offset", "has_more", "count"} and page["count"] == 1


def test_long_poll_408_then_wakes_on_completion(http: httpx.Client) -> None:
    job_id = submit(http, code="import time\ntime.sleep(3)\nprint('done')")
    started = time.monotonic()
    expired = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 1})
    assert expired.status_code == 408 and expired.json()["detail"] == "Timeout waiting for job"
    assert 0.9 < time.monotonic() - started < 3
    record = wait(http, job_id)
    assert record["status"] == "succeeded" and record["stdout"] == "done\n"
    assert time.monotonic() - started < 15


def test_idempotent_replay_and_conflict(http: httpx.Client) -> None:
    body = {"code": "print('once')", "idempotency_key": "idem-http-0001"}
    first = http.post("/execute/async", json=body).json()
    again = http.post("/execute/async", json=body).json()
    assert again["job_id"] == first["job_id"]
    conflict = http.post("/execute/async", json={**body, "timeout": 5})
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == "Idempotency key reused with different payload"
    wait(http, first["job_id"])
    replay = http.post("/execute/async", json=body).json()
    assert replay == {"job_id": first["job_id"], "status": "succeeded"}
    sync = http.post("/execute", json=body).json()  # BEYOND: sync execute honours the key too
    assert sync["execution_id"] == first["job_id"] and sync["stdout"] == "once\n"


def test_artifacts_etag_head_and_if_none_match(http: httpx.Client) -> None:
    job_id = submit(http, code="open('/output/report.txt','w').write('hello artifact')")
    record = wait(http, job_id, view="full")
    (info,) = [a for a in record["artifacts"] if a["name"] == "report.txt"]
    got = http.get(f"/jobs/{job_id}/artifacts/report.txt")
    assert got.status_code == 200 and got.content == b"hello artifact"
    assert got.headers["ETag"] == f'"{info["sha256"]}"'
    assert "attachment" in got.headers["Content-Disposition"]
    head = http.head(f"/jobs/{job_id}/artifacts/report.txt")
    assert head.status_code == 200 and head.headers["Content-Length"] == "14" and head.content == b""
    cached = http.get(f"/jobs/{job_id}/artifacts/report.txt", headers={"If-None-Match": got.headers["ETag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert http.get(f"/jobs/{job_id}/artifacts/missing.txt").status_code == 404
    escape = http.get(f"/jobs/{job_id}/artifacts/..%2Fsecret")
    assert escape.status_code == 400 and escape.json()["detail"] == "Invalid artifact path", escape.text


def test_cancel_running_and_queued_jobs(http: httpx.Client) -> None:
    sleepers = [submit(http, code="import time\ntime.sleep(30)") for _ in range(3)]  # 2 workers: one queues
    time.sleep(1.5)
    for job_id in sleepers:
        response = http.post(f"/jobs/{job_id}/cancel")
        assert response.json() == {"status": "cancelled", "job_id": job_id}
    started = time.monotonic()
    for job_id in sleepers:
        assert wait(http, job_id)["status"] == "cancelled"
    assert time.monotonic() - started < 20
    assert http.post(f"/jobs/{sleepers[0]}/cancel").status_code == 404


def test_rerun_and_fork_keep_lineage_and_settings(http: httpx.Client) -> None:
    parent = submit(
        http,
        code="import json;print(json.load(open('/input/data.json'))['v'])",
        input_data={"v": 7},
        timeout=9,
    )
    wait(http, parent)
    rerun = http.post(f"/jobs/{parent}/rerun", json={}).json()
    fork = http.post(
        f"/jobs/{parent}/fork", json={"code": "import json;print(json.load(open('/input/data.json'))['v']*2)"}
    ).json()
    for child, stdout, relationship in ((rerun["job_id"], "7\n", "rerun"), (fork["job_id"], "14\n", "fork")):
        record = wait(http, child, view="full")
        assert record["stdout"] == stdout
        assert (record["parent_execution_id"], record["relationship"]) == (parent, relationship)
    assert http.post(f"/jobs/{parent}/fork", json={"code": " "}).status_code == 422
    assert http.post(f"/jobs/{parent}/rerun", json={"timeout": 999}).status_code == 422


def test_job_types_health_and_openapi(http: httpx.Client) -> None:
    types = http.get("/job-types").json()
    assert [t["name"] for t in types] == ["default"]
    assert http.get("/job-types/default").json()["timeout"] == 30
    assert http.get("/job-types/nope").json()["detail"] == "Job type 'nope' not found"
    health = http.get("/health").json()
    assert (
        health["status"] == "healthy" and health["gvisor_available"] is True and health["runtime"] == "runsc"
    )
    spec = http.get("/openapi.json").json()
    assert "/execute/async" in spec["paths"] and "ExecuteRequest" in spec["components"]["schemas"]


BREAKABLE_RUNSC = """#!/bin/sh
# The real runsc, except that sandbox creation fails while the file "broken" is next to this script
# (restores too: once a snapshot template is ready, jobs are restored from it instead of run).
if [ -e "$(dirname "$0")/broken" ]; then
    case " $* " in *" run "*|*" create "*|*" restore "*) echo "injected fault: no sandbox" >&2; exit 1;; esac
fi
exec {real} "$@"
"""


def test_dead_letters_hold_infrastructure_failures_only(tmp_path: Path) -> None:
    """A user's failure is a record, never a dead letter; a sandbox that cannot start is one, by type."""
    real = shutil.which("runsc", path=RUNSC_PATH)
    assert real is not None
    runsc = tmp_path / "bin" / "runsc"
    runsc.parent.mkdir()
    runsc.write_text(BREAKABLE_RUNSC.format(real=real))
    runsc.chmod(0o755)
    settings = {
        "security_mode": "strict",
        "max_workers": 1,
        "api_rate_limit_enabled": False,
        "runsc_path": str(runsc),
        "warm_pool_size": 0,  # every job creates its sandbox, so the fault reaches it
        "max_retry_attempts": 2,
    }
    with (
        local_server(tmp_path / "server", settings, env={"PATH": RUNSC_PATH}) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        failed = http.post("/execute", json={"code": "raise SystemExit(3)"}).json()
        assert failed["success"] is False and failed["exit_code"] == 3  # the user's failure
        assert http.get("/dlq/stats").json() == {"total": 0, "by_error_type": {}}
        (runsc.parent / "broken").touch()
        broken = submit(http, code="print('never runs')")
        record = wait(http, broken)
        assert record["status"] == "failed" and record["error"]["type"] == "internal_error", record
        (runsc.parent / "broken").unlink()
        assert wait(http, submit(http, code="print(1)"))["status"] == "succeeded"

        assert http.get("/dlq/stats").json() == {"total": 1, "by_error_type": {"internal_error": 1}}
        page = http.get("/dlq", params={"limit": 5}).json()
        assert [(e["job_id"], e["error_type"]) for e in page["items"]] == [(broken, "internal_error")]
        assert page["count"] == 1 and page["has_more"] is False
        code_hash = hashlib.sha256(b"print('never runs')").hexdigest()
        assert page["items"][0]["job_data"]["code_hash"] == code_hash
        assert http.get("/dlq", params={"error_type": "timeout"}).json()["items"] == []
