"""Completion webhooks, the operator's pure part: when a finished job's delivery is due, and the status
patch one attempt's outcome makes (``io/webhooks.py`` sends; ``reconciler.py`` wires the two).

The delivery state lives in the PythonJob (``status.webhook``, translated by
``tako_vm.models.pythonjob``), so a restarted operator (or a new leader) carries on where the last one
stopped, with the same ``webhook-id``. The schedule and the state machine are the local backend's
(``tako_vm.delivery.state``): exponential backoff with jitter within a retry window.
"""

from __future__ import annotations

import random
from typing import Any

from tako_operator.core.status import validated
from tako_operator.settings import WebhookSettings
from tako_vm.delivery.state import OPEN_STATES, AttemptResult, Delivery, Limits, Schedule, after_attempt
from tako_vm.models.crd import TERMINAL_PHASES
from tako_vm.models.pythonjob import delivery_from_job, webhook_status


def schedule_of(settings: WebhookSettings) -> Schedule:
    return Schedule(settings.first_retry_seconds, settings.max_retry_seconds, settings.retry_window_seconds)


def limits_of(settings: WebhookSettings) -> Limits:
    return Limits(
        settings.connect_timeout_seconds, settings.read_timeout_seconds, settings.max_response_bytes
    )


def is_open(job: dict[str, Any]) -> bool:
    """The job has a webhook that is not settled yet (delivered or failed): keep the job until it is."""
    delivery = delivery_from_job(job)
    return delivery is not None and delivery.state in OPEN_STATES


def due_in(job: dict[str, Any], now: float) -> float | None:
    """Seconds until the job's next webhook attempt (<= 0: now), or ``None`` when there is nothing to
    send: no webhook, the job has not finished (its record is not final), or the delivery is settled."""
    if ((job.get("status") or {}).get("phase")) not in TERMINAL_PHASES:
        return None
    delivery = delivery_from_job(job)
    if delivery is None or delivery.state not in OPEN_STATES:
        return None
    return delivery.next_attempt_at - now if delivery.state == "pending" else 0.0


def outcome_patch(
    delivery: Delivery, result: AttemptResult, now: float, schedule: Schedule, rng: random.Random
) -> tuple[Delivery, dict[str, Any]]:
    """The delivery after one attempt and the status merge patch that stores it (checked against the
    CRD's status model)."""
    after = after_attempt(delivery, result, now, schedule, rng)
    return after, validated({"webhook": webhook_status(after)})


def not_sent(reason: str) -> AttemptResult:
    """An attempt that could not be made (no secret configured for the namespace): retried, since a
    Secret can be fixed within the window."""
    return AttemptResult(False, error=reason)


def refused(reason: str) -> AttemptResult:
    """An attempt that will never be made (webhooks not configured): the delivery fails at once."""
    return AttemptResult(False, error=reason, refused=True)
