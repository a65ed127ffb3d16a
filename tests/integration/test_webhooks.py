"""Completion webhooks against a real server process (local backend, real runsc) and a real receiver on
loopback (examples/webhook_receiver.py, allowlisted): verified, retried, persisted across restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_server import RUNSC_PATH, SANDBOX_TESTS
from webhook_support import SECRET, Receiver

from tako_vm import webhooks
from tako_vm.testing import LocalServer, local_server

SETTINGS: dict[str, Any] = {
    "security_mode": "strict",
    "max_workers": 2,
    "api_rate_limit_enabled": False,
    "warm_pool_size": 1,
    "webhook_secrets": {"default": SECRET},
    "webhook_allowlist": ["127.0.0.1/32"],
    # Fast retries for the test (the defaults are 5 s doubling to 1 h, for 24 h).
    "webhook_first_retry_seconds": 0.3,
    "webhook_max_retry_seconds": 0.6,
}

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with local_server(tmp_path_factory.mktemp("webhooks"), SETTINGS, env={"PATH": RUNSC_PATH}) as running:
        yield running


def submit(url: str, webhook_url: str, code: str = "print('hi')\n") -> str:
    response = httpx.post(f"{url}/execute/async", json={"code": code, "webhook_url": webhook_url}, timeout=30)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def wait_delivery(url: str, job_id: str, deadline_s: float = 90.0) -> dict[str, Any]:
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        status = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        hook = status.get("webhook")
        if hook and hook["state"] in ("delivered", "failed"):
            return dict(hook)
        time.sleep(0.2)
    raise AssertionError(f"webhook of {job_id} not settled: {status}")


def test_each_job_gets_one_verified_delivery_after_two_500s(server: LocalServer) -> None:
    answers: dict[str, int] = {}

    def flaky(payload: dict[str, Any], headers: Mapping[str, str]) -> int:
        job = payload["data"]["execution_id"]
        answers[job] = answers.get(job, 0) + 1
        return 500 if answers[job] <= 2 else 200

    receiver = Receiver(flaky).start()
    try:
        jobs = [submit(server.url, receiver.url, f"print({n} * 7)\n") for n in range(2)]
        states = {job: wait_delivery(server.url, job) for job in jobs}
    finally:
        receiver.stop()
    assert receiver.server is None
    for job, state in states.items():
        assert state["state"] == "delivered", state
        assert state["attempts"] == 3 and state["last_status_code"] == 200, state
        assert state["webhook_id"] == f"msg_{job}"
        sent = [(h, b) for h, b in receiver.attempts() if h["webhook-id"] == state["webhook_id"]]
        assert len(sent) == 3  # two 500s, one 200: the same webhook-id every time
        for headers, body in sent:
            payload = webhooks.verify(body, headers, SECRET)
            assert payload["type"] == "job.completed"
            assert payload["data"]["execution_id"] == job and payload["data"]["status"] == "succeeded"
        assert len({body for _, body in sent}) == 1  # the same body on every retry
        record = httpx.get(f"{server.url}/jobs/{job}/result", timeout=30).json()
        assert payload["data"]["stdout"] == record["stdout"]


def test_delivery_survives_a_receiver_outage_and_a_sender_kill(tmp_path: Path) -> None:
    receiver = Receiver()  # not started: connections are refused
    settings = {**SETTINGS, "webhook_first_retry_seconds": 0.5, "webhook_max_retry_seconds": 1.0}
    with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as first:
        job = submit(first.url, receiver.url)
        give_up = time.monotonic() + 90
        while time.monotonic() < give_up:  # wait until it has failed at least twice (mid-retry)
            hook = httpx.get(f"{first.url}/jobs/{job}", timeout=30).json().get("webhook") or {}
            if hook.get("attempts", 0) >= 2:
                break
            time.sleep(0.2)
        assert hook["state"] == "pending" and hook["last_status_code"] is None, hook
        assert "Connect" in (hook["last_error"] or ""), hook
        first.process.kill()  # SIGKILL: no clean shutdown
        first.process.wait(timeout=30)
    receiver.start()
    try:
        with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as second:
            state = wait_delivery(second.url, job)
    finally:
        receiver.stop()
    assert state["state"] == "delivered" and state["attempts"] >= 3, state
    [(headers, body)] = receiver.attempts()
    assert headers["webhook-id"] == f"msg_{job}"
    assert webhooks.verify(body, headers, SECRET)["data"]["execution_id"] == job


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.1.2.3/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://100.100.100.200/", "a cloud metadata address"),
        ("http://[::1]:8080/", "a loopback address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/", "it embeds 169.254.169.254, a cloud metadata address"),
        ("http://[::ffff:10.0.0.1]/", "it embeds 10.0.0.1, a private address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "it embeds 169.254.169.254"),
        ("http://[2002:a9fe:a9fe::1]/", "it embeds 169.254.169.254"),
        ("http://127.0.0.2:8080/", "a loopback address"),  # the allowlist holds 127.0.0.1/32 only
        ("http://0.0.0.0/", "the unspecified address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("ftp://example.com/", "scheme must be http or https"),
        ("http://user:pw@127.0.0.1/", "credentials in the URL"),
    ],
)
def test_private_and_metadata_addresses_are_refused_with_422(
    server: LocalServer, url: str, reason: str
) -> None:
    response = httpx.post(
        f"{server.url}/execute/async", json={"code": "print(1)", "webhook_url": url}, timeout=30
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("webhook_url:") and reason in detail, detail


def test_a_redirect_to_a_metadata_address_is_not_followed(server: LocalServer) -> None:
    def redirect(payload: dict[str, Any], headers: Mapping[str, str]) -> int:
        return 307

    class Redirecting(Receiver):
        def start(self) -> Redirecting:
            super().start()
            assert self.server is not None
            handler = self.server.RequestHandlerClass
            original = handler._answer  # type: ignore[attr-defined]

            def answer(this: Any, status: int) -> None:
                if status != 307:
                    original(this, status)
                    return
                this.send_response(307)
                this.send_header("Location", "http://169.254.169.254/latest/meta-data/iam")
                this.send_header("Content-Length", "0")
                this.end_headers()

            handler._answer = answer  # type: ignore[attr-defined]
            return self

    receiver = Redirecting(redirect).start()
    try:
        job = submit(server.url, receiver.url)
        state = wait_delivery(server.url, job)
    finally:
        receiver.stop()
    assert state["state"] == "failed" and state["attempts"] == 1, state
    assert "169.254.169.254" in state["last_error"] and "metadata" in state["last_error"], state


def test_a_tenant_without_a_secret_cannot_ask_for_a_webhook(tmp_path: Path) -> None:
    settings = {k: v for k, v in SETTINGS.items() if k != "webhook_secrets"}
    with local_server(tmp_path, settings, env={"PATH": RUNSC_PATH}) as bare:
        response = httpx.post(
            f"{bare.url}/execute/async", json={"code": "print(1)", "webhook_url": "http://127.0.0.1:9/"}
        )
    assert response.status_code == 422
    assert "no webhook secret is configured for tenant 'default'" in response.json()["detail"]
