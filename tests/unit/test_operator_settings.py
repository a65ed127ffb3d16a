"""The operator's one settings type and its one environment parser (tako_operator/settings.py)."""

from __future__ import annotations

import pytest

from tako_operator.settings import (
    DEFAULT_API_CONCURRENCY,
    DEFAULT_JOB_CACHE_ENTRIES,
    Settings,
    settings_from_env,
)


def test_no_variables_give_the_documented_defaults() -> None:
    assert settings_from_env({}) == Settings()
    assert Settings().api_concurrency == DEFAULT_API_CONCURRENCY
    assert Settings().job_cache_entries == DEFAULT_JOB_CACHE_ENTRIES


def test_every_section_comes_from_its_variable() -> None:
    settings = settings_from_env(
        {
            "TAKO_OPERATOR_MAX_CONCURRENT_JOBS": "7",
            "TAKO_OPERATOR_MAX_ATTEMPTS": "5",
            "TAKO_OPERATOR_DEFAULT_TTL_SECONDS": "none",
            "TAKO_VM_RUNTIME_CLASS_NAME": "gvisor-systrap",
            "TAKO_VM_DEFAULT_JOB_IMAGE": "python:3.12-slim",
            "TAKO_OPERATOR_JOB_CACHE_ENTRIES": "0",
            "TAKO_OPERATOR_API_CONCURRENCY": "4",
            "TAKO_OPERATOR_STANDBY_PORT": "9000",
            "TAKO_OPERATOR_RESTART_BACKOFF_SECONDS": "2",
            "TAKO_VM_METRICS_PORT": "9102",
            "TAKO_OPERATOR_NAMESPACES": "a, b",
            "POD_NAMESPACE": "tako-system",
        }
    )
    assert settings.max_concurrent == 7
    assert settings.limits.max_attempts == 5 and settings.limits.default_ttl_seconds is None
    assert settings.pods.runtime_class_name == "gvisor-systrap"
    assert settings.default_image == "python:3.12-slim"
    assert settings.job_cache_entries == 0
    assert settings.api_concurrency == 4
    assert settings.standby.port == 9000
    assert settings.restart.backoff_seconds == 2
    assert settings.metrics_port == 9102
    assert settings.namespaces == ("a", "b") and settings.pod_namespace == "tako-system"


@pytest.mark.parametrize(
    ("name", "value", "limit"),
    [
        ("TAKO_OPERATOR_API_CONCURRENCY", "0", "from 1 to 256"),
        ("TAKO_OPERATOR_API_CONCURRENCY", "257", "from 1 to 256"),
        ("TAKO_OPERATOR_API_CONCURRENCY", "many", "from 1 to 256"),
        ("TAKO_OPERATOR_JOB_CACHE_ENTRIES", "1000001", "from 0 to 1000000"),
        ("TAKO_OPERATOR_JOB_CACHE_ENTRIES", "-1", "from 0 to 1000000"),
        ("TAKO_OPERATOR_MAX_CONCURRENT_JOBS", "0", ">= 1"),
        ("TAKO_OPERATOR_MAX_ATTEMPTS", "three", "a number"),
        ("TAKO_OPERATOR_DEADLINE_GRACE_SECONDS", "1.5", "whole number of seconds"),
    ],
)
def test_bad_values_name_the_variable_and_the_limit(name: str, value: str, limit: str) -> None:
    with pytest.raises(ValueError, match=name) as caught:
        settings_from_env({name: value})
    assert limit in str(caught.value)


def test_kopf_keeps_no_diff_base_because_no_handler_needs_one() -> None:
    """main.NoDiffBase skips kopf's per-event deep copy of every body; that is only safe while the
    registry has no change handlers (create/update/resume/delete), daemons or timers: pinned here."""
    import kopf

    from tako_operator import handlers
    from tako_operator.main import NoDiffBase, OperatorOptions, _kopf_settings
    from tako_operator.settings import Scope

    registry = kopf.OperatorRegistry()
    handlers.register(registry, object())  # type: ignore[arg-type]
    assert list(registry._watching.get_all_handlers()), "the event handlers are registered"
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    storage = _kopf_settings(OperatorOptions(config=Settings()), Scope(True)).persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    assert storage.fetch(body=kopf.Body({})) is None and storage.build(body=kopf.Body({})) == {}


def test_tune_gc_freezes_start_up_objects_and_only_raises_the_first_threshold() -> None:
    """main.tune_gc: what is alive at start-up moves to the permanent generation (no collection walks it
    again); only the first generation's threshold changes, and collection still finds cycles."""
    import gc
    import weakref

    from tako_operator.main import GC_FIRST_GENERATION_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 1_000
        assert gc.get_threshold() == (GC_FIRST_GENERATION_THRESHOLD, before[1], before[2])
        assert gc.isenabled()

        class Node:
            other: object = None

        cycle = Node()
        cycle.other = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
