"""Verify a Tako VM completion webhook (Standard Webhooks, via the `standardwebhooks` package).

    from tako_vm import webhooks

    def receive(body: bytes, headers: Mapping[str, str]) -> None:
        event = webhooks.verify(body, headers, "whsec_...")   # raises WebhookVerificationError if forged
        record = event["data"]                                # the job's full record
        if already_seen(headers["webhook-id"]):               # retries repeat the same webhook-id
            return

Pass the body exactly as received (bytes). The signature covers `<webhook-id>.<webhook-timestamp>.<body>`;
timestamps more than 5 minutes away from now are refused (replays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify"]


def verify(body: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The parsed payload (`{"type": "job.completed", "timestamp", "data": record}`) if the
    `webhook-id`, `webhook-timestamp` and `webhook-signature` headers prove `secret` signed `body`;
    `WebhookVerificationError` otherwise."""
    payload = Webhook(secret).verify(body, dict(headers))
    if not isinstance(payload, dict):
        raise WebhookVerificationError("payload is not a JSON object")
    return payload
