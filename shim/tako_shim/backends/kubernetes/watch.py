"""One shared PythonJob watch per namespace, fanned out to any number of long-poll waiters.

A waiter subscribes to ``(namespace, name)``; the namespace's watch task starts with the first
subscription and runs until ``close``. Every event for a subscribed job hands the object to its
waiters and sets their ``asyncio.Event``: no polling, and the result comes from the cluster, so a
job submitted through one shim replica is awaited just as well from another.

The watch starts without a resourceVersion, so the server first replays every job as ``ADDED``
(list-then-watch in one stream); it resumes from the last seen resourceVersion when the server ends
the stream, starts over on ``410 Gone``, and backs off exponentially on errors. Because a fresh
start replays current state, a completion during a reconnect still reaches the waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tako_shim.backends.kubernetes.api import WATCH_OPENED, KubeApiError, WatchExpired

log = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 15.0


class WatchSource(Protocol):
    def watch_jobs(self, namespace: str, resource_version: str | None) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(eq=False)
class Subscription:
    """What one waiter sees: the latest object from the watch (``None``: deleted or not seen yet)."""

    namespace: str
    name: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    latest: dict[str, Any] | None = None
    deleted: bool = False

    def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
        self.deleted = event_type == "DELETED"
        self.latest = None if self.deleted else obj
        self.changed.set()

    async def next_change(self, within: float) -> bool:
        """Wait for the next event; False if ``within`` seconds pass first."""
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), within)
        except TimeoutError:
            return False
        return True


@dataclass
class WatchStats:
    streams_opened: int = 0
    restarts_after_gone: int = 0
    errors: int = 0
    events: int = 0
    failing: bool = False  # the last attempt failed and no stream has delivered an event since


class JobWatch:
    """The process's watches (one per namespace in use) and their waiters."""

    def __init__(
        self,
        source: WatchSource,
        sleep: Callable[[float], Any] = asyncio.sleep,
        observer: Callable[[str, str, dict[str, Any]], None] = lambda namespace, event_type, obj: None,
    ) -> None:
        """``observer(namespace, event type, object)`` sees every event (the shim's metrics count
        finishes with it); it must not raise."""
        self._source = source
        self._sleep = sleep
        self._observer = observer
        self._waiters: dict[tuple[str, str], set[Subscription]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.stats: dict[str, WatchStats] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, namespace: str, name: str) -> AsyncIterator[Subscription]:
        sub = Subscription(namespace, name)
        key = (namespace, name)
        self._waiters.setdefault(key, set()).add(sub)
        self._ensure_watch(namespace)
        try:
            yield sub
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(sub)
                if not waiters:
                    del self._waiters[key]

    def waiter_count(self) -> int:
        return sum(len(subs) for subs in self._waiters.values())

    def failing_namespaces(self) -> list[str]:
        """Namespaces whose watch is down (erroring and backing off); ``/health`` reports them."""
        return sorted(ns for ns, stats in self.stats.items() if stats.failing)

    def follow(self, namespace: str) -> None:
        """Watch ``namespace`` from now on even without a waiter (for the observer)."""
        self._ensure_watch(namespace)

    def _ensure_watch(self, namespace: str) -> None:
        task = self._tasks.get(namespace)
        if task is None or task.done():
            self.stats.setdefault(namespace, WatchStats())
            self._tasks[namespace] = asyncio.create_task(self._run(namespace), name=f"tako-watch-{namespace}")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self, namespace: str) -> None:
        stats = self.stats[namespace]
        resource_version: str | None = None
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            try:
                stats.streams_opened += 1
                received = 0
                async for event in self._source.watch_jobs(namespace, resource_version):
                    stats.failing = False  # the API answered 200: the watch is up, even with no jobs
                    if event.get("type") == WATCH_OPENED:
                        continue
                    received += 1
                    backoff = BACKOFF_INITIAL_SECONDS
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        resource_version = str(version)
                    if event.get("type") == "BOOKMARK":
                        continue
                    stats.events += 1
                    self._dispatch(namespace, str(event.get("type")), obj)
                if received:
                    continue  # the server ended the stream (timeoutSeconds): resume where we were
                await self._sleep(backoff)  # an empty stream that ended at once: do not spin
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                stats.restarts_after_gone += 1
                log.info("watch of %s expired (410 Gone): listing again", namespace)
                resource_version = None
                continue
            except (KubeApiError, ValueError) as exc:
                stats.errors += 1
                stats.failing = True
                log.warning("watch of %s failed (%s); retrying in %.1fs", namespace, exc, backoff)
            except Exception:
                stats.errors += 1
                stats.failing = True
                log.exception("watch of %s failed unexpectedly; retrying in %.1fs", namespace, backoff)
            resource_version = None  # after an error, start over: the replay covers what was missed
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _dispatch(self, namespace: str, event_type: str, obj: dict[str, Any]) -> None:
        self._observer(namespace, event_type, obj)
        name = (obj.get("metadata") or {}).get("name")
        for sub in list(self._waiters.get((namespace, str(name)), ())):
            sub.deliver(event_type, obj)
