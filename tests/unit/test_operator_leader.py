"""Leader election (tako_operator/leader.py) and the watch scope (settings.resolve_scope), pure parts and
the elector against an in-memory Lease store with the API server's compare-and-swap on resourceVersion.
The same code against kmock, in processes started as the chart starts them: tests/integration/
test_operator_ha.py."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from tako_operator.io.leader import ElectionSettings, LeaderElector, desired_lease, may_take, new_identity
from tako_operator.settings import Scope, resolve_scope, settings_from_env

NOW = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


def settings(identity: str, **timing: float) -> ElectionSettings:
    return ElectionSettings(namespace="ns", name="lease", identity=identity, **timing)


def test_a_new_lease_names_its_holder_without_a_precondition() -> None:
    body = desired_lease(None, settings("a"), NOW)
    assert "resourceVersion" not in body["metadata"]
    assert body["spec"]["holderIdentity"] == "a" and body["spec"]["leaseTransitions"] == 0
    assert body["spec"]["leaseDurationSeconds"] == 15
    assert body["spec"]["renewTime"] == "2026-12-01T09:00:00.000000Z"


def test_renewing_keeps_the_acquire_time_and_taking_over_counts_a_transition() -> None:
    held = {**desired_lease(None, settings("a"), NOW), "metadata": {"name": "lease", "resourceVersion": "7"}}
    later = NOW + datetime.timedelta(seconds=5)
    renewed = desired_lease(held, settings("a"), later)
    assert renewed["metadata"]["resourceVersion"] == "7", "the write is a compare-and-swap"
    assert renewed["spec"]["acquireTime"] == held["spec"]["acquireTime"]
    assert renewed["spec"]["renewTime"] != held["spec"]["renewTime"]
    assert renewed["spec"]["leaseTransitions"] == 0
    taken = desired_lease(held, settings("b"), later)
    assert taken["spec"]["holderIdentity"] == "b" and taken["spec"]["leaseTransitions"] == 1
    released = desired_lease(held, settings("a"), later, release=True)
    assert released["spec"]["holderIdentity"] == "" and released["spec"]["leaseDurationSeconds"] == 1


def test_another_holder_is_waited_out_for_its_lease_duration_on_the_local_clock() -> None:
    lease = desired_lease(None, settings("a"), NOW)
    assert may_take(lease, "a", seen_at=0, now=0, default_duration=15)
    assert not may_take(lease, "b", seen_at=100.0, now=114.9, default_duration=15)
    assert may_take(lease, "b", seen_at=100.0, now=115.0, default_duration=15)
    free = desired_lease(lease, settings("a"), NOW, release=True)
    assert may_take(free, "b", seen_at=100.0, now=100.0, default_duration=15), "a released lease"


def test_identities_are_unique_even_for_the_same_pod_name() -> None:
    env = {"POD_NAME": "tako-operator-7d9f"}
    first, second = new_identity(env), new_identity(env)
    assert first != second and first.startswith("tako-operator-7d9f_")


def test_settings_must_leave_the_old_leader_time_to_stop() -> None:
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        settings("a", lease_duration=10, renew_deadline=10, retry_period=2)


class Store:
    """An in-memory Lease with the API server's semantics: 409 on a duplicate create or a stale
    resourceVersion; `down` makes every call fail like an unreachable API server."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    async def get_lease(self, namespace: str, name: str, request_timeout: float) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionRefusedError("api down")
        return None if self.lease is None else {**self.lease, "metadata": dict(self.lease["metadata"])}

    async def write_lease(self, namespace: str, body: dict[str, Any], request_timeout: float) -> bool:
        if self.down:
            raise ConnectionRefusedError("api down")
        wanted = body["metadata"].get("resourceVersion")
        if (self.lease is None) != (wanted is None) or (wanted and wanted != str(self.version)):
            return False
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_leader_a_follower_takes_over_only_after_the_lease_expired() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        a = LeaderElector(store, settings("a"), clock)
        b = LeaderElector(store, settings("b"), clock)
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        clock.now += 14
        assert await a.try_acquire_or_renew(), "a renews"
        clock.now += 14
        assert not await b.try_acquire_or_renew(), "b saw the renewal: its wait starts again"
        clock.now += 15  # a is gone: no renewal for a full lease duration since b saw the record
        assert await b.try_acquire_or_renew()
        assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
        assert not await a.try_acquire_or_renew(), "the old leader does not get it back"

    asyncio.run(scenario())


def test_two_candidates_writing_at_once_only_one_wins() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        results = await asyncio.gather(
            *(LeaderElector(store, settings(name), clock).try_acquire_or_renew() for name in "abc")
        )
        assert sorted(results) == [False, False, True]

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_steps_down_after_the_renew_deadline_and_releases_on_stop() -> None:
    async def scenario() -> None:
        store = Store()
        fast = {"lease_duration": 0.6, "renew_deadline": 0.3, "retry_period": 0.05}
        a = LeaderElector(store, settings("a", **fast))
        assert await a.acquire(lambda: False) and a.leading
        store.down = True
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(a.hold(), timeout=5)
        assert not a.leading and asyncio.get_running_loop().time() - started >= 0.3
        store.down = False
        b = LeaderElector(store, settings("b", **fast))
        assert await b.acquire(lambda: False)
        await b.release()
        assert store.lease is not None and store.lease["spec"]["holderIdentity"] == ""
        c = LeaderElector(store, settings("c", **fast))
        assert await c.try_acquire_or_renew(), "a released lease is taken at once"

    asyncio.run(scenario())


# --- the watch scope --------------------------------------------------------------------------------


def test_the_flags_win_then_the_charts_variable_then_the_own_namespace() -> None:
    env = {"TAKO_OPERATOR_NAMESPACES": "team-a, team-b", "POD_NAMESPACE": "tako-system"}
    assert resolve_scope(["x"], False, settings_from_env(env), None) == Scope(False, ("x",))
    assert resolve_scope(None, True, settings_from_env(env), None) == Scope(True)
    assert resolve_scope(None, False, settings_from_env(env), None) == Scope(False, ("team-a", "team-b"))
    assert resolve_scope(None, False, settings_from_env({"TAKO_OPERATOR_NAMESPACES": "*"}), None) == Scope(
        True
    )
    assert resolve_scope(None, False, settings_from_env({"POD_NAMESPACE": "tako-system"}), "ctx") == Scope(
        False, ("tako-system",)
    )
    assert resolve_scope(None, False, settings_from_env({}), "ctx") == Scope(False, ("ctx",))
    with pytest.raises(ValueError, match="TAKO_OPERATOR_NAMESPACES"):
        resolve_scope(None, False, settings_from_env({}), None)


def test_only_globs_need_namespace_scanning() -> None:
    assert not Scope(False, ("team-a",)).needs_scanning
    assert not Scope(True).needs_scanning, "all namespaces: cluster-wide watches, no namespace list"
    assert Scope(False, ("team-*",)).needs_scanning
    assert Scope(False, ("!kube-system",)).needs_scanning


def test_kopf_lists_no_namespaces_unless_globs_ask_for_it() -> None:
    """The bug this replaces: without --namespace, kopf's scanning was derived from the empty flag list
    and listed namespaces cluster-wide, which a namespaced install's RBAC forbids."""
    from tako_operator.main import OperatorOptions, _kopf_settings

    options = OperatorOptions()
    own = resolve_scope(None, False, settings_from_env({"POD_NAMESPACE": "tako-system"}), None)
    assert _kopf_settings(options, own).scanning.disabled
    assert _kopf_settings(options, Scope(True)).scanning.disabled
    assert not _kopf_settings(options, Scope(False, ("team-*",))).scanning.disabled
