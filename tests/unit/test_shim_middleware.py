"""Pure pieces of the HTTP boundary: the rate limiter, key extraction and the tenant lookup."""

from __future__ import annotations

import pytest

from tako_shim.config import Settings
from tako_shim.errors import InvalidRequest
from tako_shim.http.middleware import FixedWindowLimiter, tenant_for
from tako_shim.submission import JobResolver, check_requirements
from tako_vm.models.wire import ExecuteRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fixed_window_limits_per_identity_and_resets() -> None:
    clock = Clock()
    limiter = FixedWindowLimiter(limit=3, window=60, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    retry_after = limiter.hit("a")
    assert retry_after is not None and 0 < retry_after <= 60
    assert limiter.hit("b") is None  # separate bucket
    clock.now += 60
    assert limiter.hit("a") is None  # next window


def test_tenant_lookup_is_exact() -> None:
    settings = Settings(api_keys={"key-team-a-0123456789": "team-a"})
    assert tenant_for(settings, "key-team-a-0123456789") == "team-a"
    assert tenant_for(settings, "key-team-a-012345678") is None
    assert tenant_for(settings, "ключ-не-ascii-0123456") is None  # non-ASCII keys are just unknown
    assert tenant_for(settings, None) is None


def test_resolution_applies_job_type_and_timeouts() -> None:
    settings = Settings(
        default_timeout=20,
        allow_runtime_requirements=False,
        job_types=[{"name": "data", "timeout": 60, "startup_timeout": 45, "requirements": ["six"]}],  # type: ignore[list-item]
    )
    resolver = JobResolver(settings)
    plain = resolver.resolve(ExecuteRequest(code="print(1)"))
    assert (plain.job_type, plain.timeout, plain.startup_timeout, plain.requirements) == (
        "default",
        20,
        120,
        [],
    )
    typed = resolver.resolve(ExecuteRequest(code="print(1)", job_type="data@v2"))
    assert (typed.job_type, typed.timeout, typed.startup_timeout, typed.requirements) == (
        "data",
        60,
        45,
        ["six"],
    )
    with pytest.raises(InvalidRequest, match="job_type: unknown job type 'nope'"):
        resolver.resolve(ExecuteRequest(code="print(1)", job_type="nope"))
    with pytest.raises(
        InvalidRequest, match="requirements: Runtime dependency installation is disabled"
    ) as refused:
        resolver.resolve(ExecuteRequest(code="print(1)", requirements=["six"]))
    # The message names the real setting, in both of its spellings, and no Docker-era "images".
    assert "allow_runtime_requirements: true in tako_vm.yaml" in str(refused.value)
    assert "TAKO_VM_ALLOW_RUNTIME_REQUIREMENTS=true" in str(refused.value)
    assert "image" not in str(refused.value)


def test_fingerprint_covers_the_payload_but_not_the_key() -> None:
    resolver = JobResolver(Settings())
    a = resolver.resolve(ExecuteRequest(code="print(1)", idempotency_key="key-00000001"))
    b = resolver.resolve(ExecuteRequest(code="print(1)", idempotency_key="key-00000002"))
    c = resolver.resolve(ExecuteRequest(code="print(1)", idempotency_key="key-00000001", timeout=5))
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize(
    "bad", ["pkg @ https://evil/x.whl", "-e .", "a; rm -rf /", "../local", "x==1 --hash"]
)
def test_requirement_specifiers_are_plain_names_and_versions(bad: str) -> None:
    with pytest.raises(InvalidRequest, match=r"requirements\[0\]"):
        check_requirements([bad])
    check_requirements(["numpy>=1.20,<3", "pandas[excel]==2.2.1", "six"])
