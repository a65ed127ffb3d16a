"""Webhook pieces that need no server: the address policy, signing/verifying, the retry schedule."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from tako_vm import webhooks
from tako_vm.delivery.policy import (
    WebhookRefused,
    address_problem,
    check_addresses,
    parse_allowlist,
    parse_url,
)
from tako_vm.delivery.state import AttemptResult, Delivery, Schedule, after_attempt, payload, signed_headers

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200",
        "100.64.0.1", "0.0.0.0", "224.0.0.251", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
        "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:0a00:0001::1",
    ],
)  # fmt: skip
def test_non_public_addresses_have_a_named_problem(address: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None
    with pytest.raises(WebhookRefused, match=r"webhook_url: .* is "):
        check_addresses("host", [ipaddress.ip_address(address)], [])


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None
    check_addresses("host", [ipaddress.ip_address(address)], [])


def test_every_address_of_a_host_must_pass_unless_allowlisted() -> None:
    mixed = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(WebhookRefused, match=r"'svc' \(10.0.0.1\) is a private address"):
        check_addresses("svc", mixed, [])
    check_addresses("svc", mixed, parse_allowlist(["10.0.0.0/8"]))
    # The allowlist also covers the IPv4 an IPv6 address embeds.
    check_addresses("svc", [ipaddress.ip_address("::ffff:10.0.0.1")], parse_allowlist(["10.0.0.0/8"]))
    with pytest.raises(WebhookRefused, match="has no address"):
        check_addresses("svc", [], [])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme must be http or https"),
        ("http:///nohost", "has no host"),
        ("https://a:b@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://exa mple.com/", "control characters or spaces"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(WebhookRefused, match=message):
        parse_url(url)


def test_signature_verifies_and_fails_on_a_tampered_body_or_wrong_secret() -> None:
    body = payload({"execution_id": "j1", "status": "succeeded", "ended_at": "2026-01-01T00:00:00+00:00"})
    headers = signed_headers(SECRET, "msg_j1", body)
    assert headers["webhook-signature"].startswith("v1,")
    assert webhooks.verify(body, headers, SECRET)["data"]["execution_id"] == "j1"
    tampered = body.replace(b"succeeded", b"failed\x20\x20\x20")
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(tampered, headers, SECRET)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(body, headers, "whsec_" + base64.b64encode(b"x" * 32).decode())
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(body, {**headers, "webhook-id": "msg_other"}, SECRET)
    stale = signed_headers(SECRET, "msg_j1", body, datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(webhooks.WebhookVerificationError, match="too old"):
        webhooks.verify(body, stale, SECRET)


def test_payload_is_the_same_bytes_every_time() -> None:
    record = {"execution_id": "j", "status": "failed", "ended_at": "t", "stdout": "é"}
    assert payload(record) == payload(dict(reversed(record.items())))
    assert json.loads(payload(record)) == {"type": "job.completed", "timestamp": "t", "data": record}


def test_backoff_grows_with_jitter_and_stops_at_the_window() -> None:
    schedule = Schedule(first=1.0, maximum=8.0, window=30.0)
    rng = random.Random(7)
    delays = [schedule.delay(n, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(2 ** (n - 1), 8.0)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered
    d = Delivery("j", "t", "http://x", "msg_j")
    now = 1000.0
    d = after_attempt(d, AttemptResult(False, 500, "HTTP 500"), now, schedule, rng)
    assert (d.state, d.attempts, d.last_status_code, d.window_ends_at) == ("pending", 1, 500, 1030.0)
    assert now + 0.5 <= d.next_attempt_at <= now + 1.0
    late = after_attempt(d, AttemptResult(False, 503, "HTTP 503"), 1029.9, schedule, rng)
    assert late.state == "failed" and late.attempts == 2
    ok = after_attempt(d, AttemptResult(True, 204), 1001.0, schedule, rng)
    assert ok.state == "delivered" and ok.delivered_at == 1001.0 and ok.last_error is None
    refused = after_attempt(d, AttemptResult(False, error="redirect", refused=True), 1001.0, schedule, rng)
    assert refused.state == "failed"
