"""The retry loop of completion webhooks: at least once, never silently lost.

A backend keeps one ``Delivery`` per job with a webhook in durable storage (``DeliveryStore``): created
``waiting`` with the job, due once the job's terminal state is written, then retried with exponential
backoff and jitter (``webhook_first_retry_seconds`` doubling up to ``webhook_max_retry_seconds``) until a
2xx answer (``delivered``) or until ``webhook_retry_window_seconds`` after the first attempt (``failed``,
logged as an error). A sender restart loses nothing: the state is read back from the store. Every attempt
carries the same ``webhook-id``, so a receiver deduplicates the rare repeat (an answer lost after the
receiver processed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tako_shim.config import Settings
from tako_shim.errors import InvalidRequest
from tako_vm.delivery.policy import IPNetwork, WebhookRefused, parse_allowlist
from tako_vm.delivery.send import post_once, resolve_checked
from tako_vm.delivery.state import (
    AttemptResult,
    Delivery,
    Limits,
    Schedule,
    after_attempt,
    payload,
    signed_headers,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often the store is asked for due deliveries when nothing pokes the loop
BATCH = 32
CONCURRENCY = 8


async def accepted_url(
    settings: Settings, tenant: str, requested: str | None, *, secret_here: bool = True
) -> str | None:
    """The webhook URL a submission gets (its own, else the tenant's default), checked now: a 422 names
    what is wrong (no secret for the tenant, a private or metadata address, a bad URL). Both backends
    call this. ``secret_here=False``: the secrets are not the shim's to check (the kubernetes backend,
    where the operator signs with a Kubernetes Secret and fails the delivery closed without one)."""
    url = requested or settings.webhook_default_urls.get(tenant)
    if url is None:
        return None
    if secret_here and tenant not in settings.webhook_secrets:
        raise InvalidRequest(
            f"webhook_url: no webhook secret is configured for tenant {tenant!r} (webhook_secrets)"
        )
    try:
        await resolve_checked(url, parse_allowlist(settings.webhook_allowlist))
    except WebhookRefused as exc:
        raise InvalidRequest(str(exc)) from None
    return url


def schedule_from(settings: Settings) -> Schedule:
    return Schedule(
        settings.webhook_first_retry_seconds,
        settings.webhook_max_retry_seconds,
        settings.webhook_retry_window_seconds,
    )


class DeliveryStore(Protocol):
    """Where a backend keeps deliveries; every method is durable before it returns."""

    async def due(self, now: float, limit: int) -> list[Delivery]:
        """Waiting/pending deliveries whose job's terminal state is stored and whose time came."""

    async def save(self, delivery: Delivery) -> None: ...

    async def record(self, delivery: Delivery) -> dict[str, Any] | None:
        """The job's full record as JSON (None: the job is gone; the delivery is dropped)."""


class Dispatcher:
    """Sends due deliveries until closed; ``poke()`` when a job finished so it need not wait for the poll."""

    def __init__(
        self,
        store: DeliveryStore,
        settings: Settings,
        *,
        post: Callable[..., Awaitable[AttemptResult]] = post_once,
        rng: random.Random | None = None,
        on_attempt: Callable[[str], None] = lambda state: None,
    ) -> None:
        """``on_attempt`` gets the delivery's state after each attempt (``delivered``, ``pending``: will
        retry, ``failed``: given up), for the shim's metrics."""
        self.store = store
        self.on_attempt = on_attempt
        self.secrets = dict(settings.webhook_secrets)
        self.allowlist: list[IPNetwork] = parse_allowlist(settings.webhook_allowlist)
        self.limits = Limits(
            settings.webhook_connect_timeout_seconds,
            settings.webhook_read_timeout_seconds,
            settings.webhook_max_response_bytes,
        )
        self.schedule = schedule_from(settings)
        self._post = post
        self._rng = rng or random.Random()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tako-webhooks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        self._poked.set()

    async def _loop(self) -> None:
        while True:
            self._poked.clear()
            try:
                due = await self.store.due(time.time(), BATCH)
                await asyncio.gather(*(self._attempt(d) for d in due))
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage fault: try again at the next round, keep the loop alive
                log.exception("webhook round failed; retrying in %.1fs", POLL_SECONDS)
                due = []
            if len(due) < BATCH:
                with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancel
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._poked.wait()

    async def _attempt(self, delivery: Delivery) -> None:
        async with self._slots:
            record = await self.store.record(delivery)
            if record is None:
                await self.store.save(dataclasses.replace(delivery, state="failed", last_error="job deleted"))
                return
            secret = self.secrets.get(delivery.tenant)
            if secret is None:
                result = AttemptResult(False, error=f"no webhook secret for tenant {delivery.tenant!r}")
            else:
                body = payload(record)
                headers = signed_headers(secret, delivery.webhook_id, body)
                result = await self._post(
                    delivery.url, body, headers, allowlist=self.allowlist, limits=self.limits
                )
            after = after_attempt(delivery, result, time.time(), self.schedule, self._rng)
            if after.state == "failed":
                log.error(
                    "webhook %s for job %s failed after %d attempts: %s",
                    delivery.webhook_id,
                    delivery.job_id,
                    after.attempts,
                    after.last_error,
                )
            await self.store.save(after)
            self.on_attempt(after.state)
