"""The operator's job cache (what replaces the GET at the start of every reconcile pass) and the
admission fast path for bursts that all fit (issue #17). Pure; the operator-level request count is in
tests/integration/test_operator_requests.py."""

from __future__ import annotations

import random
from typing import Any

from tako_operator.core.admission import Admission, Entry, admissible
from tako_operator.core.jobcache import CODE_PLACEHOLDER, JobCache, is_slim, slim_copy, slim_pod


def job(name: str, status: dict[str, Any] | None = None, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "takovm.dev/v1alpha1",
        "kind": "PythonJob",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "annotations": dict(annotations),
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"code": "x" * 50_000, "inputData": {"big": "y" * 50_000}, "timeoutSeconds": 5},
        "status": status or {},
    }


def test_an_event_older_than_the_operators_write_is_not_taken() -> None:
    cache = JobCache()
    assert cache.observed(job("a")) is not None  # ADDED, no status
    cache.wrote(job("a", {"phase": "Pending", "attempts": 1}))
    assert cache.observed(job("a")) is None  # an older event (no status yet) arrives late
    assert cache.get(("ns", "a"))["status"]["attempts"] == 1  # type: ignore[index]
    stored = cache.observed(job("a", {"phase": "Pending", "attempts": 1}))  # the echo of the write
    assert stored is not None and cache.is_current(("ns", "a"), stored)
    assert cache.unconfirmed == {}
    assert cache.observed(job("a", {"phase": "Running", "attempts": 1})) is not None  # newer: taken


def test_written_annotations_must_show_too() -> None:
    cache = JobCache()
    cache.wrote(job("a", {"phase": "Pending"}, **{"takovm.dev/retry-at": "t"}), {"takovm.dev/retry-at": "t"})
    assert cache.observed(job("a", {"phase": "Pending"})) is None
    assert cache.observed(job("a", {"phase": "Pending"}, **{"takovm.dev/retry-at": "t"})) is not None


def test_the_cache_is_bounded_and_slim() -> None:
    cache = JobCache(max_entries=3)
    for n in range(10):
        cache.observed(job(f"j{n}", {"phase": "Pending", "stdout": "o" * 10_000}))
    assert len(cache) == 3 and cache.get(("ns", "j0")) is None and cache.get(("ns", "j9")) is not None
    body = cache.get(("ns", "j9"))
    assert body is not None and is_slim(body)
    assert body["spec"] == {"code": CODE_PLACEHOLDER, "timeoutSeconds": 5}
    assert "stdout" not in body["status"] and "managedFields" not in body["metadata"]
    assert not is_slim(job("x")) and is_slim(slim_copy(job("x")))


def test_an_evicted_job_with_an_unconfirmed_write_is_read_again() -> None:
    cache = JobCache(max_entries=1)
    cache.wrote(job("a", {"attempts": 1}))
    cache.observed(job("b"))  # evicts a
    assert cache.observed(job("a")) is None  # a stale event for a is not taken: the pass reads the API
    assert cache.get(("ns", "a")) is None


def test_slim_pod_keeps_what_the_reconciler_reads() -> None:
    pod = {
        "metadata": {"name": "p", "managedFields": [1], "labels": {"a": "b"}},
        "spec": {"runtimeClassName": "gvisor", "containers": [{"name": "job"}], "activeDeadlineSeconds": 9},
        "status": {"phase": "Running"},
    }
    slim = slim_pod(pod)
    assert slim["spec"] == {"runtimeClassName": "gvisor", "activeDeadlineSeconds": 9}
    assert slim["status"] == pod["status"] and "managedFields" not in slim["metadata"]
    pod["metadata"]["annotations"] = {"takovm.dev/claimed-by": "uid"}
    assert slim_pod(pod)["spec"] == pod["spec"]  # a claimed standby Pod keeps its token and port


def test_the_admission_fast_path_decides_like_the_ordered_one() -> None:
    rng = random.Random(17)
    for _ in range(2000):
        entries = [
            Entry(
                created=f"{rng.randrange(50):03d}",
                namespace="ns",
                name=f"j{n}",
                admitted=rng.random() < 0.3,
                terminal=rng.random() < 0.2,
            )
            for n in range(rng.randrange(1, 12))
        ]
        limit = rng.randrange(1, 15)
        granted = {e.key for e in entries if rng.random() < 0.2}
        released = {e.key for e in entries if rng.random() < 0.1}
        key = rng.choice(entries).key
        admission = Admission(limit=limit, granted=set(granted), released=set(released))
        expected = (
            any(e.key == key and e.admitted and not e.terminal for e in entries)
            or key in granted
            or key in admissible(entries, granted, released, limit)
        )
        assert admission.decide(key, entries) == expected, (entries, limit, granted, released, key)


def test_an_echo_that_beat_the_answer_leaves_nothing_unconfirmed() -> None:
    cache = JobCache()
    cache.observed(job("a", {"phase": "Pending", "attempts": 1}))  # the watch shows the write first
    cache.wrote(job("a", {"phase": "Pending", "attempts": 1}))  # then the answer to the patch arrives
    assert cache.unconfirmed == {}


def test_unconfirmed_writes_are_bounded() -> None:
    cache = JobCache(max_entries=2)
    for n in range(20):
        cache.wrote(job(f"j{n}", {"attempts": 1}))
    assert len(cache.unconfirmed) <= 8 and len(cache) <= 2
