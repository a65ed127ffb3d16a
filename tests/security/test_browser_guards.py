"""A web page the developer visits attacks the default local server (issue #19, finding 7).

Auth is off on 127.0.0.1 by default, so the browser is the attacker's only way in: a CORS "simple"
request (``Content-Type: text/plain``, no preflight), a cross-origin ``fetch``, or DNS rebinding (a
page whose domain re-resolves to 127.0.0.1, so its requests carry a foreign ``Host``). The requests
below are the ones such a browser sends; the server is real (``security_mode: permissive``: what is
attacked is the HTTP boundary, and a refused job never reaches a sandbox).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tako_shim.config import Settings
from tako_shim.http.guards import BrowserPolicy
from tako_vm.testing import LocalServer, local_server

BODY = b'{"code": "print(1)"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    settings = {"security_mode": "permissive", "warm_pool_size": 0, "api_rate_limit_enabled": False}
    with local_server(tmp_path_factory.mktemp("browser"), settings) as running:
        yield running


@pytest.fixture
def http(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def jobs(http: httpx.Client) -> int:
    return len(http.get("/executions", params={"limit": 100}).json()["items"])


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_csrf_simple_request_is_refused_with_415_and_runs_nothing(
    http: httpx.Client, content_type: str | None
) -> None:
    before = jobs(http)
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/execute/async", "/execute"):
        response = http.post(path, content=BODY, headers=headers)
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["detail"] and response.json()["correlation_id"]
    assert jobs(http) == before
    assert http.post("/execute/async", content=BODY, headers={"Content-Type": "application/json"}).is_success


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_cross_origin_browser_request_is_refused(http: httpx.Client, headers: dict[str, str]) -> None:
    before = jobs(http)
    response = http.post(
        "/execute/async", content=BODY, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == 403, response.text
    assert "server_allowed_origins" in response.json()["detail"]
    assert http.get("/executions", headers=headers).status_code == 403  # nor can it read history
    assert jobs(http) == before


def test_same_origin_and_non_browser_requests_still_work(http: httpx.Client, server: LocalServer) -> None:
    same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
    assert http.post("/execute/async", content=BODY, headers=same).status_code == 200
    assert http.get("/executions", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert http.post("/jobs/nope/cancel").status_code == 404  # no body: no Content-Type needed


def test_a_dns_rebinding_host_header_is_refused_on_a_loopback_bind(
    http: httpx.Client, server: LocalServer
) -> None:
    for host in (f"evil.example:{server.port}", "evil.example", f"localhost.evil.example:{server.port}"):
        response = http.get("/executions", headers={"Host": host})
        assert response.status_code == 403, response.text
        assert "server_allowed_hosts" in response.json()["detail"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"LOCALHOST:{server.port}"):
        assert http.get("/executions", headers={"Host": host}).status_code == 200


def policy(**settings: object) -> BrowserPolicy:
    return BrowserPolicy.from_settings(Settings.model_validate(settings))


def test_policy_defaults_and_configured_names() -> None:
    loopback = policy(server_port=8000)
    assert loopback.host_allowed("localhost:8000") and loopback.host_allowed("[::1]:8000")
    assert loopback.host_allowed("127.0.0.1:41234") and loopback.host_allowed("localhost")
    assert not loopback.host_allowed("") and not loopback.host_allowed("evil.example:8000")
    custom = policy(server_allowed_hosts=["tako.internal", "proxy.example:8443"])
    assert custom.host_allowed("tako.internal:8000") and custom.host_allowed("proxy.example:8443")
    assert not custom.host_allowed("proxy.example:8444") and not custom.host_allowed("localhost:8000")
    network = policy(server_host="0.0.0.0", api_auth_enabled=True, api_keys=["k" * 16])
    assert network.hosts is None  # a network bind checks keys, not Host names
    console = policy(server_port=8000, server_allowed_origins=["https://console.example"])
    headers = {"Host": "localhost:8000", "Origin": "https://console.example", "Sec-Fetch-Site": "cross-site"}
    assert console.problem("GET", headers, has_body=False) is None
    assert console.problem("POST", {**headers, "Content-Type": "text/plain"}, has_body=True) is not None
