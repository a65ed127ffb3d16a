"""Completion webhooks, the operator's I/O: the namespace's signing secret (from the Kubernetes Secret the
chart names), one signed attempt (``tako_vm.delivery.send``: SSRF-checked, resolved once, bounded), and
the timers that bring each due attempt. The decisions are pure (``core/webhooks.py``); the reconciler
reads the job and writes the status patch an attempt returns.

Only the leader sends (the operator is leader-elected), so several shim replicas never send twice; the
state in ``status.webhook`` makes a restarted or new leader resume with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tako_operator.core.webhooks import limits_of, not_sent, outcome_patch, refused, schedule_of
from tako_operator.io import detached
from tako_operator.io.kube import Kube
from tako_operator.settings import WebhookSettings
from tako_vm.delivery.policy import parse_allowlist
from tako_vm.delivery.send import post_once
from tako_vm.delivery.state import AttemptResult, payload, secret_problem, signed_headers
from tako_vm.models.pythonjob import delivery_from_job, record_from_job

log = logging.getLogger("tako_operator.webhooks")
Key = tuple[str, str]
NOT_CONFIGURED = (
    "completion webhooks are not configured on the operator (TAKO_OPERATOR_WEBHOOK_SECRET_NAME, "
    "chart value webhooks.secretName)"
)


class WebhookSender:
    """Signs and sends one due attempt at a time per job; ``arm`` schedules the next one."""

    def __init__(
        self,
        kube: Kube,
        settings: WebhookSettings,
        own_namespace: str | None,
        *,
        post: Callable[..., Awaitable[AttemptResult]] = post_once,
        rng: random.Random | None = None,
        on_attempt: Callable[[str], None] = lambda state: None,
    ) -> None:
        """``on_attempt`` gets the delivery's state after each attempt (the operator's metrics)."""
        self.kube = kube
        self.on_attempt = on_attempt
        self.settings = settings
        self.secret_namespace = settings.secret_namespace or own_namespace
        self.allowlist = parse_allowlist(settings.allowlist)
        self.schedule = schedule_of(settings)
        self.limits = limits_of(settings)
        self._post = post
        self._rng = rng or random.Random()
        self._secrets: tuple[float, dict[str, str]] | None = None
        self._slots: asyncio.Semaphore | None = None
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.inflight: set[Key] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    # -- one attempt --------------------------------------------------------------------------------

    async def secrets(self) -> dict[str, str]:
        """namespace -> signing secret, read from the Secret at most every ``secret_cache_seconds``."""
        cached = self._secrets
        if cached is not None and time.monotonic() - cached[0] < self.settings.secret_cache_seconds:
            return cached[1]
        assert self.settings.secret_name and self.secret_namespace
        data = await self.kube.get_secret_data(self.secret_namespace, self.settings.secret_name) or {}
        found: dict[str, str] = {}
        for namespace, encoded in data.items():
            try:
                found[namespace] = base64.b64decode(encoded, validate=True).decode().strip()
            except (binascii.Error, ValueError):
                log.error("webhook Secret key %r is not base64; ignored", namespace)
        self._secrets = (time.monotonic(), found)
        return found

    async def _send(self, job: dict[str, Any], webhook_id: str, url: str) -> AttemptResult:
        namespace = str((job.get("metadata") or {}).get("namespace") or "")
        if not self.settings.secret_name or not self.secret_namespace:
            return refused(NOT_CONFIGURED)
        secret = (await self.secrets()).get(namespace)
        where = f"Secret {self.secret_namespace}/{self.settings.secret_name}"
        if secret is None:
            return not_sent(f"no webhook secret for namespace {namespace!r} in {where}")
        problem = secret_problem(secret)
        if problem is not None:
            return not_sent(f"the webhook secret of namespace {namespace!r} in {where} {problem}")
        body = payload(record_from_job(job).model_dump(mode="json"))
        headers = signed_headers(secret, webhook_id, body)
        return await self._post(url, body, headers, allowlist=self.allowlist, limits=self.limits)

    async def attempt(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``job``'s (due) completion webhook once: the status patch recording the outcome."""
        delivery = delivery_from_job(job)
        if delivery is None:
            return None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.concurrency)
        async with self._slots:
            result = await self._send(job, delivery.webhook_id, delivery.url)
        after, patch = outcome_patch(delivery, result, time.time(), self.schedule, self._rng)
        self.on_attempt(after.state)
        if after.state == "failed":
            log.error(
                "webhook %s of job %s/%s failed after %d attempts: %s",
                after.webhook_id, after.tenant, after.job_id, after.attempts, after.last_error,
            )  # fmt: skip
        else:
            log.info(
                "webhook %s of job %s/%s: %s (attempt %d, %s)",
                after.webhook_id, after.tenant, after.job_id, after.state, after.attempts,
                after.last_status_code or after.last_error,
            )  # fmt: skip
        return patch

    # -- timers ---------------------------------------------------------------------------------------

    def arm(self, key: Key, delay: float, run: Callable[[Key], Awaitable[float | None]]) -> None:
        """Run ``run(key)`` in ``delay`` seconds (replacing an earlier timer of the job); ``run`` returns
        the delay of the attempt after it (None: nothing more). One attempt per job at a time."""
        if key in self.inflight:
            return  # the attempt running now arms the next one when it is done
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()
        self.timers[key] = detached.call_later(max(delay, 0.0), self._start, key, run)

    def _start(self, key: Key, run: Callable[[Key], Awaitable[float | None]]) -> None:
        self.timers.pop(key, None)
        self.inflight.add(key)

        async def go() -> None:
            try:
                after = await run(key)
            except Exception:
                log.exception("webhook attempt of job %s/%s failed", *key)
                after = self.schedule.first
            finally:
                self.inflight.discard(key)
            if after is not None:
                self.arm(key, after, run)

        task = detached.spawn(go(), name=f"webhook-{key[0]}-{key[1]}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def forget(self, key: Key) -> None:
        handle = self.timers.pop(key, None)
        if handle is not None:
            handle.cancel()
