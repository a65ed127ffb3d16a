"""Fuzz the REST API from the OpenAPI document the running server serves (schemathesis + hypothesis).

Every route, with schema-valid (positive) and schema-violating (negative) inputs, against a real server
process in strict mode: fuzz submissions run in real runsc sandboxes. Half of the generated path ids are
replaced by a real finished job (and its real artifact), so the fuzzer reaches past the 404s.

Promises checked for every generated request: no 5xx (503 only as the documented "queue full"), every
error body is the contract's JSON (`detail` + `correlation_id`), every response carries
`X-Correlation-ID`, no request hangs (30 s client timeout against a 4 s job ceiling), and the server is
still healthy afterwards. Examples are derandomized, so a failure reproduces on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tako_shim.http.app import ROUTES
from tako_vm.testing import LocalServer

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 25
REQUEST_TIMEOUT_SECONDS = 30.0
QUEUE_FULL = "Job queue is full"

ROUTE_CASES = [
    pytest.param(route.method, route.path, mode, id=f"{mode.value}-{route.method} {route.path}")
    for route in ROUTES
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # negative examples need a body or query schema to violate (any string is a valid path id)
    if mode is GenerationMode.POSITIVE or route.body or route.query
]


@pytest.fixture(scope="module")
def served_schema(fuzz_server: LocalServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


@pytest.fixture(scope="module")
def known_job(fuzz_server: LocalServer) -> Iterator[dict[str, str]]:
    """A finished job with one artifact, so generated requests can hit real ids and names."""
    code = "open('/output/report.txt', 'w').write('fuzz')\nprint('seed')"
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as http:
        submitted = http.post("/execute/async", json={"code": code})
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        record = http.get(f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 60}).json()
    assert record["status"] == "succeeded", record
    yield {"job_id": job_id, "execution_id": job_id, "artifact_name": "report.txt"}


@pytest.fixture(scope="module")
def observed() -> Iterator[Counter[int]]:
    statuses: Counter[int] = Counter()
    yield statuses
    print(f"\nfuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")


def check_response(response: Any, method: str) -> None:
    status = response.status_code
    body = response.text
    assert status < 500 or (status == 503 and QUEUE_FULL in body), f"{status}: {body[:500]}"
    assert response.headers.get("x-correlation-id"), "every response carries X-Correlation-ID"
    if status >= 400 and method != "HEAD":
        payload = response.json()
        assert set(payload) == {"detail", "correlation_id"}, payload
        assert payload["detail"], payload


@pytest.mark.parametrize(("method", "path", "mode"), ROUTE_CASES)
def test_generated_requests_never_get_a_server_error(
    fuzz_server: LocalServer,
    served_schema: Any,
    known_job: dict[str, str],
    observed: Counter[int],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = served_schema[path][method]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode), use_real_ids=st.booleans())
    def run(case: Any, use_real_ids: bool) -> None:
        if use_real_ids and case.path_parameters:
            for name in case.path_parameters:
                if name in known_job:
                    case.path_parameters[name] = known_job[name]
        response = case.call(base_url=fuzz_server.url, timeout=REQUEST_TIMEOUT_SECONDS)
        observed[response.status_code] += 1
        try:
            check_response(response, method)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nreproduce: {case.as_curl_command()}") from None

    run()
    health = httpx.get(f"{fuzz_server.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
    assert fuzz_server.process.poll() is None, "the server process died"
