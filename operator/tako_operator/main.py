"""Entry points: `run_operator` (blocking, called by `tako-vm operator`) and `operate` (a coroutine
that tests run in a thread of their own with a stop flag).

Connection: in-cluster service account if `KUBERNETES_SERVICE_HOST` is set, else `$KUBECONFIG`
(or ~/.kube/config). kopf's own client gets the same credentials through a login handler.

Supervision: kopf ends its whole reactor on some API errors it does not retry (an HTTP-level
`410 Gone` answer to a watch request, 5xx or connection errors outlasting its request backoffs).
`operate` then restarts kopf in-process with backoff: the new run lists every resource again and
watches from there, while the Reconciler (admission slots, wake-up timers) lives on. Reconciling is
idempotent by deterministic object names, so a restart never creates a second Pod.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import kopf

from tako_operator import handlers
from tako_operator.io.kube import connect
from tako_operator.io.leader import (
    ElectionSettings,
    LeaderElector,
    LeadershipLost,
    follower_liveness,
    new_identity,
)
from tako_operator.io.metrics import Metrics
from tako_operator.reconciler import Reconciler
from tako_operator.settings import RestartPolicy, Scope, Settings, resolve_scope, settings_from_env

log = logging.getLogger("tako_operator")

StopFlag = asyncio.Event | threading.Event


def restart_delay(policy: RestartPolicy, failures: int) -> float | None:
    """Seconds to wait before restart number `failures` (1-based), or None to give up."""
    if failures > policy.max_consecutive_failures:
        return None
    return float(min(policy.backoff_seconds * 2 ** (failures - 1), policy.backoff_max_seconds))


@dataclass
class OperatorOptions:
    namespaces: list[str] | None = None
    all_namespaces: bool = False
    peering: str | None = None
    standalone: bool = True
    priority: int = 0
    liveness: str | None = None
    metrics_port: int | None = None
    kubeconfig: str | None = None
    config: Settings = field(default_factory=settings_from_env)  # the environment's (one parser)
    # kopf tuning (tests shorten these)
    watch_server_timeout: int = 300
    peering_lifetime: int = 60
    peering_interval: float = 30.0
    # Lease-based leader election (see leader.py): the Lease's name, or None for none
    leader_election: str | None = None
    leader_election_namespace: str | None = None  # default: $POD_NAMESPACE, else the kubeconfig's
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, switched off: kopf deep-copies every watched body (a PythonJob's code and input,
    every Pod) on every event to diff it against the last handled state, which only change handlers
    (on.create/update/resume), daemons and timers use. This operator registers none of those
    (`handlers.register` has event handlers and indexes only, and a test pins that), so the copies
    were pure cost: ~11% of the event loop under a burst. Nothing is fetched, built or stored."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def _kopf_settings(options: OperatorOptions, scope: Scope) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = options.watch_server_timeout
    settings.watching.client_timeout = options.watch_server_timeout + 10
    settings.watching.reconnect_backoff = 0.5
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.peering.lifetime = options.peering_lifetime
    settings.peering.stealth = True
    if options.peering and options.leader_election is None:
        settings.peering.name = options.peering
        settings.peering.mandatory = True
    settings.peering.priority = options.priority
    settings.networking.request_timeout = 30.0
    settings.execution.max_workers = 4
    # kopf arms a SIGKILL timer whenever its reactor stops without the stop flag, which is also the
    # case when it fails: with in-process restarts that timer would kill the restarted operator
    # 10 minutes later. A stuck shutdown is bounded by the Pod's termination grace period instead.
    settings.process.ultimate_exiting_timeout = None
    settings.scanning.disabled = not scope.needs_scanning
    return settings


async def operate(
    options: OperatorOptions,
    stop_flag: StopFlag | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever), restarting a failed kopf reactor."""
    kube = connect(options.kubeconfig, options.config.api_concurrency)
    metrics = Metrics()
    reconciler = Reconciler(kube, options.config, metrics)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler)
    server = None
    if options.metrics_port is not None:
        server = metrics.serve(options.metrics_port)
    scope = resolve_scope(
        options.namespaces, options.all_namespaces, options.config, kube.connection.default_namespace
    )
    log.info("watching %s", "every namespace" if scope.clusterwide else ", ".join(scope.namespaces))
    elected = options.leader_election is not None

    async def run_kopf() -> None:
        reconciler.new_run()  # each run rebuilds its job list from the API, not the previous run's
        await bounded_shutdown(
            kopf.operator(
                registry=registry,
                settings=_kopf_settings(options, scope),
                clusterwide=scope.clusterwide,
                namespaces=list(scope.namespaces),
                standalone=options.standalone or elected,
                peering_name=None if elected else options.peering,
                priority=options.priority,
                liveness_endpoint=options.liveness,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )

    try:
        if options.leader_election is None:
            await supervise(run_kopf, options.config.restart, stop_flag)
        else:
            election = ElectionSettings(
                namespace=options.leader_election_namespace
                or options.config.pod_namespace
                or kube.connection.default_namespace
                or _fail("give --leader-election-namespace (or set POD_NAMESPACE)"),
                name=options.leader_election,
                identity=new_identity(),
                lease_duration=options.lease_duration,
                renew_deadline=options.renew_deadline,
                retry_period=options.retry_period,
            )
            await lead(
                LeaderElector(kube, election),
                lambda: supervise(run_kopf, options.config.restart, stop_flag),
                options.liveness,
                stop_flag,
            )
    finally:
        if server is not None:
            server[0].shutdown()
        await kube.close()


def _fail(message: str) -> str:
    raise ValueError(message)


async def lead(
    elector: LeaderElector,
    run: Callable[[], Awaitable[None]],
    liveness: str | None,
    stop_flag: StopFlag | None = None,
) -> None:
    """Wait for leadership (answering the liveness probe meanwhile), then `run` (kopf, supervised)
    while renewing the Lease. Lost leadership cancels `run` at once and raises LeadershipLost (the
    process exits and restarts as a follower); a clean stop releases the Lease."""
    stopped = asyncio.Event()  # SIGINT/SIGTERM while following (kopf handles them once it runs)
    _catch_signals(stopped)
    async with follower_liveness(liveness):
        acquired = await elector.acquire(lambda: _is_set(stop_flag) or stopped.is_set())
    if not acquired:
        return
    holding = asyncio.ensure_future(elector.hold())
    working = asyncio.ensure_future(run())
    try:
        await asyncio.wait({holding, working}, return_when=asyncio.FIRST_COMPLETED)
        if not working.done():
            for _ in range(2):  # the second cancellation skips kopf's graceful stop
                working.cancel()
                await asyncio.wait({working}, timeout=elector.settings.retry_period)
            raise LeadershipLost(f"lease {elector.settings.namespace}/{elector.settings.name} lost")
        working.result()
    finally:
        holding.cancel()
        if not working.done():
            working.cancel()
        await elector.release()


# kopf logs this (logger kopf._core.reactor.running) when its root task fails; kopf 1.45.2 is pinned.
_REACTOR_FAILED = "multitasker has failed"
SHUTDOWN_GRACE_SECONDS = 15.0  # a failed kopf run normally finishes its shutdown within ~5 s


class _ReactorFailure(logging.Handler):
    """Sets an event when kopf logs that its reactor failed (its shutdown may then hang: it waits
    without a timeout for watchers that retry requests or wait for a re-login that never comes)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if _REACTOR_FAILED in record.getMessage():
            self.failed.set()


async def bounded_shutdown(reactor: Awaitable[None], grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Run kopf's reactor; once it has failed, give its shutdown `grace` seconds, then cancel it
    (twice: kopf's second cancellation skips its unbounded graceful stop) and raise, so that the
    supervisor restarts it instead of waiting forever."""
    watcher = _ReactorFailure()
    kopf_logger = logging.getLogger("kopf._core.reactor.running")
    kopf_logger.addHandler(watcher)
    task = asyncio.ensure_future(reactor)
    try:
        failed = asyncio.ensure_future(watcher.failed.wait())
        await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if not task.done():
            await asyncio.wait({task}, timeout=grace)
        for _ in range(2):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        if not task.done() or task.cancelled():
            raise RuntimeError(f"kopf's reactor failed and did not stop within {grace:g} s; abandoned")
        task.result()
    finally:
        kopf_logger.removeHandler(watcher)
        if not task.done():  # we were cancelled ourselves: take kopf down with us
            task.cancel()


async def supervise(
    run: Callable[[], Awaitable[None]],
    policy: RestartPolicy,
    stop_flag: StopFlag | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call `run` until it returns (stopped by the flag or a signal); restart it when it raises,
    after `restart_delay`. Gives up (re-raises) after too many consecutive failures."""
    stopped = asyncio.Event()  # a SIGINT/SIGTERM while no reactor runs (kopf handles them otherwise)
    failures = 0
    while True:
        started = clock()
        try:
            await run()
            return
        except Exception as exc:
            if _is_set(stop_flag):
                log.warning("kopf stopped with an error after the stop flag was set: %r", exc)
                return
            failures = 1 if clock() - started >= policy.healthy_after_seconds else failures + 1
            delay = restart_delay(policy, failures)
            if delay is None:
                log.error("kopf failed %d times in a row; giving up: %r", failures, exc)
                raise
            log.error(
                "kopf failed (%r); restarting it in %.1f s (failure %d of at most %d in a row): "
                "it lists every watched resource again and reconciles from there",
                exc,
                delay,
                failures,
                policy.max_consecutive_failures,
            )
        _catch_signals(stopped)
        if await _wait_stop(stop_flag, stopped, delay):
            return


def _is_set(flag: StopFlag | None) -> bool:
    return flag is not None and flag.is_set()


def _catch_signals(stopped: asyncio.Event) -> None:
    """kopf's own signal handlers point at the failed run's future: take them back until the next run."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)


async def _wait_stop(flag: StopFlag | None, stopped: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True as soon as the stop flag is set or a signal arrived."""
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        if _is_set(flag) or stopped.is_set():
            return True
        await asyncio.sleep(min(left, 0.1))
    return _is_set(flag) or stopped.is_set()


def run_operator(
    namespaces: list[str] | None,
    all_namespaces: bool,
    peering: str | None,
    standalone: bool,
    liveness: str | None,
    metrics_port: int | None,
    **extra: Any,
) -> None:
    """Blocking entry point for `tako-vm operator`. `metrics_port` falls back to $TAKO_VM_METRICS_PORT
    (set by the Helm chart)."""
    config = settings_from_env()
    options = OperatorOptions(
        config=config,
        namespaces=namespaces,
        all_namespaces=all_namespaces,
        peering=peering,
        standalone=standalone,
        liveness=liveness,
        metrics_port=config.metrics_port if metrics_port is None else metrics_port,
        **extra,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs one INFO line per handler run ("Handler 'job_event' succeeded."): 2-3 lines per job
    # under a burst, formatted and written on the event loop. Its warnings and errors still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    tune_gc()
    run_bounded(operate(options))


GC_FIRST_GENERATION_THRESHOLD = 7_000


def tune_gc(threshold: int = GC_FIRST_GENERATION_THRESHOLD) -> None:
    """Keep the cyclic garbage collector off the start-up objects and make it run less often.

    After the imports (kopf, aiohttp, pydantic: several hundred modules and hundreds of thousands of
    objects) `gc.freeze()` moves everything alive into a permanent
    generation that no collection traverses again; before, each full collection walked all of them.
    A first-generation threshold of 7,000 allocations instead of 700 (a watch event alone parses into
    hundreds of dicts and lists) lets short-lived objects die by reference counting before a
    collection promotes them to an older generation, where they would linger until a full one.
    Collection itself is unchanged: cycles are still found, only less often. Measured in
    docs/performance.md ("Fourth round")."""
    gc.collect()
    gc.freeze()
    _first, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)


EXIT_THREADS_GRACE_SECONDS = 3.0


def _threads_still_busy(grace: float) -> bool:
    """True if a worker thread (kopf's executor's or the default one's, which the interpreter joins at exit
    without a bound) is still alive after `grace` seconds."""
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return True
    return False


def run_bounded(main: Coroutine[Any, Any, None], grace: float = EXIT_THREADS_GRACE_SECONDS) -> None:
    """`asyncio.run(main)`, except that the end does not wait for worker threads stuck in blocking calls
    (the operator's own API calls no longer use threads, but kopf runs sync work in its executor, and
    asyncio.run and the interpreter's exit join those threads without a bound): after `grace` seconds
    the process ends with them, so SIGTERM ends the operator within the Pod's termination grace period."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(main)
    except BaseException as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        log.error("operator stopped: %r", exc)
        raise
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=grace))
        shutdown = loop.create_task(loop.shutdown_default_executor())
        loop.run_until_complete(asyncio.wait({shutdown}, timeout=grace))
        stuck = not shutdown.done() or _threads_still_busy(grace)
        loop.close()
        if stuck:
            log.warning("API calls still hang after %.0f s; exiting without them", grace)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
