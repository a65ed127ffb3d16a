"""What a completion webhook delivery is, and what follows one attempt (pure: no I/O, no clock).

A delivery is ``waiting`` while its job runs, due once the job's terminal state is stored, then retried
with exponential backoff and jitter (``Schedule``: first delay doubling up to a cap) until a 2xx answer
(``delivered``) or until the retry window after the first attempt is over (``failed``). Every attempt
carries the same ``webhook-id``, so a receiver deduplicates the rare repeat. Signing follows the Standard
Webhooks spec through the ``standardwebhooks`` package: headers ``webhook-id``, ``webhook-timestamp``
(this attempt, Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

EVENT_TYPE = "job.completed"
OPEN_STATES = ("waiting", "pending")
# The ``outcome`` label of the webhook-attempt metrics (shim and operator) for a delivery's state after
# one attempt: a bounded set of words, whatever the state.
ATTEMPT_OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed"}


def attempt_outcome(state: str) -> str:
    return ATTEMPT_OUTCOMES.get(state, "other")


@dataclass(frozen=True)
class Limits:
    """Bounds of one attempt: connect and read timeouts (seconds) and how much of the answer is read."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_response_bytes: int = 65536


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False  # the policy refused the target (or a redirect): retrying will not help


@dataclass(frozen=True)
class Delivery:
    job_id: str
    tenant: str
    url: str
    webhook_id: str
    state: str = "waiting"  # waiting | pending | delivered | failed
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: float = 0.0  # Unix seconds
    window_ends_at: float | None = None  # set at the first attempt
    delivered_at: float | None = None

    def describe(self) -> dict[str, Any]:
        """The ``webhook`` object of ``GET /jobs/{id}`` (``tako_vm.models.wire.WebhookDelivery``)."""
        return {
            "webhook_id": self.webhook_id,
            "url": self.url,
            "state": self.state,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "next_attempt_at": iso(self.next_attempt_at) if self.state in OPEN_STATES else None,
            "delivered_at": iso(self.delivered_at) if self.delivered_at else None,
        }


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def webhook_id_for(job_id: str) -> str:
    """One message per job, the same on every retry (and on every replica)."""
    return f"msg_{job_id}"


def payload(record: dict[str, Any]) -> bytes:
    """The body: a Standard Webhooks envelope around the job's full record (identical on every retry)."""
    stamp = record.get("ended_at") or record.get("created_at")
    body = {"type": EVENT_TYPE, "timestamp": stamp, "data": record}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(secret: str, webhook_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now (``now`` for tests)."""
    stamp = now or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body),
    }


def secret_problem(secret: str) -> str | None:
    """Standard Webhooks secrets are ``whsec_`` + base64 of 24..64 random bytes."""
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        return "must be 'whsec_' followed by base64"
    if not 24 <= len(raw) <= 64:
        return f"must decode to 24..64 bytes, not {len(raw)}"
    return None


@dataclass(frozen=True)
class Schedule:
    first: float = 5.0
    maximum: float = 3600.0
    window: float = 86_400.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Exponential backoff with jitter: a uniform draw in [1/2, 1] of min(first * 2^(n-1), maximum)."""
        ceiling = min(self.first * 2 ** max(attempts - 1, 0), self.maximum)
        return ceiling * rng.uniform(0.5, 1.0)


def after_attempt(
    delivery: Delivery, result: AttemptResult, now: float, schedule: Schedule, rng: random.Random
) -> Delivery:
    """The delivery's next state after one attempt (pure)."""
    window_ends_at = delivery.window_ends_at or now + schedule.window
    done = dataclasses.replace(
        delivery,
        attempts=delivery.attempts + 1,
        last_status_code=result.status_code,
        last_error=result.error,
        window_ends_at=window_ends_at,
    )
    if result.delivered:
        return dataclasses.replace(done, state="delivered", delivered_at=now, last_error=None)
    next_at = now + schedule.delay(done.attempts, rng)
    if result.refused or next_at > window_ends_at:
        return dataclasses.replace(done, state="failed")
    return dataclasses.replace(done, state="pending", next_attempt_at=next_at)
