"""The supervisor that restarts a failed kopf reactor in-process (`tako_operator.main.supervise`).

Fast tests with a stand-in for `kopf.operator` (a coroutine that fails or returns as told): they pin
the restart policy. The real kopf against kmock is in test_fault_operator_watch.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from tako_operator.main import (
    bounded_shutdown,
    restart_delay,
    supervise,
)
from tako_operator.settings import RestartPolicy, settings_from_env

FAST = RestartPolicy(backoff_seconds=0.01, backoff_max_seconds=0.04, max_consecutive_failures=3)


class FlakyRun:
    """Fails `failures` times with `error`, then returns (as kopf does when stopped)."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("watch failed: 410 Gone")
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


def test_restart_backoff_comes_from_the_environment_and_bad_values_name_the_variable() -> None:
    assert settings_from_env({}).restart == RestartPolicy()
    policy = settings_from_env({"TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "60"}).restart
    assert (policy.backoff_seconds, policy.backoff_max_seconds) == (60, 60)
    both = {"TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "2", "TAKO_OPERATOR_RESTART_BACKOFF_MAX_SECONDS": "8"}
    assert [restart_delay(settings_from_env(both).restart, n) for n in (1, 2, 3)] == [2, 4, 8]
    for env in (
        {"TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "soon"},
        {"TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "-1"},
        {"TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "5", "TAKO_OPERATOR_RESTART_BACKOFF_MAX_SECONDS": "1"},
    ):
        with pytest.raises(ValueError, match="TAKO_OPERATOR_RESTART_BACKOFF"):
            settings_from_env(env)


def test_restart_delay_doubles_up_to_the_cap_then_gives_up() -> None:
    policy = RestartPolicy(backoff_seconds=1, backoff_max_seconds=30, max_consecutive_failures=7)
    assert [restart_delay(policy, n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, None]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backoff_seconds": -1}, "backoff"),
        ({"backoff_seconds": 5, "backoff_max_seconds": 1}, "backoff_max_seconds"),
        ({"max_consecutive_failures": -1}, "max_consecutive_failures"),
    ],
)
def test_a_bad_restart_policy_is_refused_naming_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


async def test_a_failed_run_is_restarted_until_it_returns() -> None:
    run = FlakyRun(failures=2)
    await supervise(run, FAST)
    assert run.calls == 3


async def test_too_many_failures_in_a_row_propagate_the_last_error() -> None:
    run = FlakyRun(failures=100, error=ConnectionError("api server unreachable"))
    with pytest.raises(ConnectionError, match="unreachable"):
        await supervise(run, FAST)
    assert run.calls == FAST.max_consecutive_failures + 1


async def test_a_long_healthy_run_resets_the_failure_count() -> None:
    """Failures spread over a long time are not 'in a row': each follows a healthy run."""
    ticks = iter(range(0, 10_000, 100))  # every clock reading is 100 s after the previous one
    policy = RestartPolicy(
        backoff_seconds=0.01, backoff_max_seconds=0.01, max_consecutive_failures=1, healthy_after_seconds=50
    )
    run = FlakyRun(failures=5)
    await supervise(run, policy, clock=lambda: float(next(ticks)))
    assert run.calls == 6


async def test_the_stop_flag_during_the_backoff_ends_supervision_without_a_restart() -> None:
    stop = threading.Event()
    run = FlakyRun(failures=100)
    policy = RestartPolicy(backoff_seconds=5, backoff_max_seconds=5)
    task = asyncio.create_task(supervise(run, policy, stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert run.calls == 1


async def test_a_failure_after_the_stop_flag_is_not_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """Even as the failure that would exceed the limit: stopping wins, nothing is raised or restarted."""
    stop = asyncio.Event()
    calls = 0

    async def fails_then_fails_while_stopping() -> None:
        nonlocal calls
        calls += 1
        if calls > FAST.max_consecutive_failures:
            stop.set()
            raise RuntimeError("cancelled watch raised on the way out")
        raise RuntimeError("watch failed: 410 Gone")

    with caplog.at_level(logging.WARNING, logger="tako_operator"):
        await asyncio.wait_for(supervise(fails_then_fails_while_stopping, FAST, stop), timeout=2)
    assert calls == FAST.max_consecutive_failures + 1  # restarted after each failure before the stop only
    restarts = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == FAST.max_consecutive_failures
    assert "after the stop flag was set" in caplog.records[-1].getMessage()


KOPF_RUNNING = logging.getLogger("kopf._core.reactor.running")


async def test_a_failed_reactor_whose_shutdown_hangs_is_cancelled_and_reported() -> None:
    """kopf's shutdown after a failure has no timeout (seen in CI: a watcher waiting for a re-login);
    the supervisor must get control back to restart it."""
    cancellations = 0

    async def hanging_reactor() -> None:
        nonlocal cancellations
        KOPF_RUNNING.error("Multidimensional multitasker has failed: injected")
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations == 2:
                    raise  # like kopf: the second cancellation skips the graceful stop

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not stop within 0\.2 s"):
        await bounded_shutdown(hanging_reactor(), grace=0.2)
    assert cancellations == 2
    assert time.monotonic() - started < 15  # grace + 5 s for the first cancellation to be ignored


async def test_a_failed_reactor_that_stops_by_itself_raises_its_own_error() -> None:
    async def failing_reactor() -> None:
        KOPF_RUNNING.error("Multidimensional multitasker has failed: injected")
        await asyncio.sleep(0.05)
        raise ValueError("the reactor's own error")

    with pytest.raises(ValueError, match="the reactor's own error"):
        await bounded_shutdown(failing_reactor(), grace=5)


async def test_a_reactor_that_stops_normally_is_left_alone() -> None:
    """A failure kopf retries by itself is no reactor failure: no cancellation, however long it runs."""
    seen: list[str] = []

    async def stopping_reactor() -> None:
        KOPF_RUNNING.error("Watcher for pods has failed: an inner failure kopf retries")
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")

    await bounded_shutdown(stopping_reactor(), grace=0.05)
    assert seen == ["finished"]
