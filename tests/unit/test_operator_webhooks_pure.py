"""The operator's webhook decisions without a server: when an attempt is due, the status patch an
outcome makes (checked against the CRD's status model), its round trip through the PythonJob, the TTL
hold of a job whose webhook is still open, and the settings from the environment."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from tako_operator.core.plan import WEBHOOK_HOLD_SECONDS, Observed, plan
from tako_operator.core.webhooks import due_in, is_open, outcome_patch
from tako_operator.settings import Limits, PodSettings, settings_from_env
from tako_vm.delivery.state import AttemptResult, Schedule
from tako_vm.models.pythonjob import delivery_from_job, webhook_of

NOW = 1_765_000_000.0
SCHEDULE = Schedule(first=5.0, maximum=40.0, window=100.0)


def job(
    phase: str | None = "Succeeded",
    webhook: dict[str, Any] | None = None,
    url: str | None = "https://h.example/x",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if phase:
        status["finishedAt"] = datetime.fromtimestamp(NOW - 10, UTC).isoformat().replace("+00:00", "Z")
    if webhook is not None:
        status["webhook"] = webhook
    return {
        "metadata": {
            "name": "j1",
            "namespace": "team-a",
            "uid": "u-1",
            "creationTimestamp": "2026-12-05T10:00:00Z",
        },
        "spec": {"code": "print(1)", **({"webhook": {"url": url}} if url else {})},
        "status": status,
    }


def apply(body: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return {**body, "status": {**body["status"], **patch}}


def test_due_only_for_a_finished_job_with_an_open_delivery() -> None:
    assert due_in(job(), NOW) == 0.0
    assert due_in(job(phase="Running"), NOW) is None, "the record is not final yet"
    assert due_in(job(url=None), NOW) is None
    assert due_in(job(webhook={"state": "delivered", "attempts": 1}), NOW) is None
    assert due_in(job(webhook={"state": "failed", "attempts": 9}), NOW) is None
    later = datetime.fromtimestamp(NOW + 7, UTC).isoformat()
    assert due_in(
        job(webhook={"state": "pending", "attempts": 1, "nextAttemptTime": later}), NOW
    ) == pytest.approx(7)


def test_outcomes_become_status_patches_that_round_trip() -> None:
    first = delivery_from_job(job())
    assert first is not None and first.webhook_id == "msg_u-1" and first.state == "waiting"
    _failed_once, patch = outcome_patch(
        first, AttemptResult(False, 500, "HTTP 500"), NOW, SCHEDULE, random.Random(1)
    )
    hook = patch["webhook"]
    assert hook["state"] == "pending" and hook["attempts"] == 1 and hook["lastStatusCode"] == 500
    assert hook["webhookId"] == "msg_u-1"
    stored = apply(job(), patch)
    again = delivery_from_job(stored)
    assert again is not None and again.attempts == 1 and again.webhook_id == "msg_u-1"
    assert 2.5 <= due_in(stored, NOW) <= 5.0, "first retry: jitter in [first/2, first]"
    assert again.window_ends_at == pytest.approx(NOW + SCHEDULE.window, abs=0.01)

    _done, patch = outcome_patch(again, AttemptResult(True, 204), NOW + 5, SCHEDULE, random.Random(1))
    assert patch["webhook"]["state"] == "delivered" and patch["webhook"]["nextAttemptTime"] is None
    shown = webhook_of(apply(stored, patch))
    assert (
        shown is not None
        and shown.state == "delivered"
        and shown.attempts == 2
        and shown.last_status_code == 204
    )
    assert shown.next_attempt_at is None and shown.delivered_at is not None


def test_the_window_ends_retries_and_a_refusal_fails_at_once() -> None:
    first = delivery_from_job(job())
    assert first is not None
    _refused, patch = outcome_patch(
        first,
        AttemptResult(False, error="x is a private address", refused=True),
        NOW,
        SCHEDULE,
        random.Random(2),
    )
    assert patch["webhook"]["state"] == "failed" and patch["webhook"]["attempts"] == 1
    late = delivery_from_job(
        apply(job(), outcome_patch(first, AttemptResult(False, 503), NOW, SCHEDULE, random.Random(3))[1])
    )
    assert late is not None
    _ended, patch = outcome_patch(
        late, AttemptResult(False, 503), NOW + SCHEDULE.window - 1, SCHEDULE, random.Random(3)
    )
    assert patch["webhook"]["state"] == "failed", "the next attempt would fall after the window"


def observed(body: dict[str, Any]) -> Observed:
    return Observed(
        job=body,
        now=datetime.fromtimestamp(NOW, UTC),
        admitted=False,
        job_type=None,
        pod=None,
        logs={},
        limits=Limits(default_ttl_seconds=5),
        settings=PodSettings(),
    )


def test_a_job_past_its_ttl_is_kept_while_its_webhook_is_open() -> None:
    open_job = job(webhook={"state": "pending", "attempts": 2})
    assert is_open(open_job)
    held = plan(observed(open_job))
    assert not held.delete_job and held.requeue_after == WEBHOOK_HOLD_SECONDS
    assert plan(observed(job(webhook={"state": "delivered", "attempts": 1}))).delete_job
    assert plan(observed(job(url=None))).delete_job


def test_settings_from_env() -> None:
    settings = settings_from_env(
        {
            "TAKO_OPERATOR_WEBHOOK_SECRET_NAME": "hooks",
            "TAKO_OPERATOR_WEBHOOK_ALLOWLIST": "127.0.0.1/32, 10.0.0.0/8",
            "TAKO_OPERATOR_WEBHOOK_RETRY_WINDOW_SECONDS": "600",
        }
    ).webhooks
    assert settings.secret_name == "hooks" and settings.allowlist == ("127.0.0.1/32", "10.0.0.0/8")
    assert settings.retry_window_seconds == 600 and settings.first_retry_seconds == 5.0
    assert settings_from_env({}).webhooks.secret_name is None
    with pytest.raises(ValueError, match="TAKO_OPERATOR_WEBHOOK_ALLOWLIST"):
        settings_from_env({"TAKO_OPERATOR_WEBHOOK_ALLOWLIST": "not-an-ip"})
