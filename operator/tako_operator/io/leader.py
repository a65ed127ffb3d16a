"""Leader election over a `coordination.k8s.io/v1` Lease: of several replicas started with identical
arguments (the chart's Deployment), exactly one runs kopf and reconciles; the others wait.

The algorithm is client-go's (k8s.io/client-go/tools/leaderelection), which every built-in controller
uses:
- each process has a unique identity (`$POD_NAME` plus a random suffix), so identical arguments are fine;
- a candidate reads the Lease and may take it when nobody holds it, or when the record it reads has
  not changed for `leaseDurationSeconds` *measured on its own clock from when it first saw that
  record* (clocks of different machines are never compared);
- taking and renewing are writes with the read `resourceVersion` as precondition: of two candidates
  writing at once, the API server lets one through and answers 409 to the other;
- the leader renews every `retry_period`; when it has not renewed for `renew_deadline` (shorter than
  the lease duration) it stops reconciling at once and the process exits, for Kubernetes to restart
  it as a follower. A follower takes over no sooner than `lease_duration` after the last renewal it
  saw, so two replicas never reconcile at the same time (`lease_duration - renew_deadline` to spare);
- a leader that stops cleanly (SIGTERM) releases the Lease (holder cleared), and a follower takes
  over at its next try, within `retry_period`.

The pure parts (`desired_lease`, `may_take`) take the clock as arguments; `LeaderElector` does the I/O
through kube.py; `follower_liveness` answers the liveness probe while kopf (which serves it when
leading) does not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from tako_operator.core.pods import format_time_precise

log = logging.getLogger("tako_operator.io.leader")


class LeadershipLost(RuntimeError):
    """The Lease could not be renewed within the renew deadline: stop reconciling now."""


@dataclass(frozen=True)
class ElectionSettings:
    namespace: str
    name: str  # the Lease's name
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} / {self.renew_deadline:g} / {self.lease_duration:g} s"
            )


def new_identity(env: Mapping[str, str] = os.environ) -> str:
    """Unique per process: the Pod's name (set by the chart through the downward API) or the host
    name, plus a random suffix (a restarted container must not pass for its previous run)."""
    return f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:10]}"


def micro_time(moment: datetime.datetime) -> str:
    """metav1.MicroTime, as the Lease's renewTime/acquireTime are written."""
    return format_time_precise(moment)


def holder(lease: dict[str, Any] | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def record_of(lease: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one write of the Lease (a renewal changes renewTime)."""
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    return (
        spec.get("holderIdentity"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
        meta.get("resourceVersion"),
    )


def may_take(
    lease: dict[str, Any], identity: str, seen_at: float, now: float, default_duration: float
) -> bool:
    """Whether `identity` may write the Lease: it holds it, nobody does, or the record has been the
    same for its leaseDurationSeconds since this process first saw it (`seen_at`, `now`: local
    monotonic seconds)."""
    current = holder(lease)
    if not current or current == identity:
        return True
    duration = float(((lease.get("spec") or {}).get("leaseDurationSeconds")) or default_duration)
    return now - seen_at >= duration


def desired_lease(
    current: dict[str, Any] | None, settings: ElectionSettings, now: datetime.datetime, release: bool = False
) -> dict[str, Any]:
    """The Lease `settings.identity` writes to take, renew (or, with `release`, give up) leadership.
    Carries the read resourceVersion, the precondition that makes the write a compare-and-swap."""
    spec = (current or {}).get("spec") or {}
    mine = holder(current) == settings.identity
    transitions = int(spec.get("leaseTransitions") or 0)
    if current is not None and not mine and not release:
        transitions += 1
    metadata: dict[str, Any] = {"name": settings.name, "namespace": settings.namespace}
    version = ((current or {}).get("metadata") or {}).get("resourceVersion")
    if version:
        metadata["resourceVersion"] = version
    if release:
        body_spec: dict[str, Any] = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }
    else:
        body_spec = {
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": max(1, math.ceil(settings.lease_duration)),
            "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": body_spec}


class LeaseApi(Protocol):
    async def get_lease(self, namespace: str, name: str, request_timeout: float) -> dict[str, Any] | None: ...

    async def write_lease(self, namespace: str, body: dict[str, Any], request_timeout: float) -> bool: ...


def _wall() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    def __init__(
        self, api: LeaseApi, settings: ElectionSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self.seen: tuple[Any, ...] | None = None
        self.seen_at = 0.0
        self.renewed_at: float | None = None  # local time the last successful write was *sent*
        self.leading = False

    async def try_acquire_or_renew(self) -> bool:
        """One try (bounded by the retry period); True when this process holds the Lease now."""
        s = self.settings
        started = self.clock()
        try:
            ok = await asyncio.wait_for(self._try(started), timeout=s.retry_period)
        except Exception as exc:  # an unreachable or failing API server: not the leader this time
            log.warning("leader election: lease %s/%s not written: %r", s.namespace, s.name, exc)
            return False
        if ok:
            self.renewed_at = started
        return ok

    async def _try(self, started: float) -> bool:
        s = self.settings
        current = await self.api.get_lease(s.namespace, s.name, s.retry_period)
        if current is not None:
            record = record_of(current)
            if record != self.seen:
                self.seen, self.seen_at = record, started
            if not may_take(current, s.identity, self.seen_at, started, s.lease_duration):
                return False
        return await self.api.write_lease(s.namespace, desired_lease(current, s, _wall()), s.retry_period)

    async def acquire(self, stopped: Callable[[], bool]) -> bool:
        """Wait until this process leads (True) or `stopped()` (False)."""
        s = self.settings
        log.info("leader election: %s waiting for lease %s/%s", s.identity, s.namespace, s.name)
        while not stopped():
            if await self.try_acquire_or_renew():
                self.leading = True
                log.info("leader election: %s leads (lease %s/%s)", s.identity, s.namespace, s.name)
                return True
            deadline = self.clock() + s.retry_period
            while (left := deadline - self.clock()) > 0:
                if stopped():
                    return False
                await asyncio.sleep(min(0.1, left))
        return False

    async def hold(self) -> None:
        """Renew every retry period; return (leadership lost) once renewals failed for the renew deadline."""
        s = self.settings
        while True:
            await asyncio.sleep(s.retry_period)
            if await self.try_acquire_or_renew():
                continue
            last = self.renewed_at if self.renewed_at is not None else 0.0
            if self.clock() - last >= s.renew_deadline:
                self.leading = False
                log.error(
                    "leader election: lease %s/%s not renewed for %.1f s: %s stops reconciling",
                    s.namespace,
                    s.name,
                    self.clock() - last,
                    s.identity,
                )
                return

    async def release(self) -> None:
        """Give the Lease up (a follower takes over at its next try). Best effort, bounded."""
        if not self.leading:
            return
        self.leading = False
        s = self.settings
        try:
            current = await asyncio.wait_for(self.api.get_lease(s.namespace, s.name, 2.0), timeout=2.5)
            if current is None or holder(current) != s.identity:
                return
            body = desired_lease(current, s, _wall(), release=True)
            if await asyncio.wait_for(self.api.write_lease(s.namespace, body, 2.0), timeout=2.5):
                log.info("leader election: %s released lease %s/%s", s.identity, s.namespace, s.name)
        except Exception as exc:
            log.warning("leader election: could not release lease %s/%s: %r", s.namespace, s.name, exc)


@contextlib.asynccontextmanager
async def follower_liveness(url: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe at `url` (kopf's --liveness URL) while this process follows: kopf,
    which serves that URL when leading, is not running yet. Freed before kopf binds the same port."""
    if not url:
        yield
        return
    parts = urlsplit(url)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"role": "follower"})

    app = web.Application()
    app.router.add_get(parts.path or "/", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80, reuse_address=True)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
