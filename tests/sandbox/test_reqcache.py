"""The requirement cache on real gVisor (issue #20): a repeat job reuses the installed set, read-only; a
corrupted entry is rebuilt; a tenant never reuses another tenant's entry unless the cache is shared; a
failed install caches nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_support import Sandbox

from tako_shim.backends.local import reqcache
from tako_shim.backends.local.sandbox.executor import LocalExecutor

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REQS = ["six==1.16.0"]
PROBE = r"""
import json, os, six
try:
    open("/deps/evil.py", "w").write("x")
    deps = "WRITABLE"
except OSError as exc:
    deps = exc.errno
print(json.dumps({"six": six.__version__, "path": six.__file__, "deps": deps, "uid": os.getuid()}))
"""


def _cache(executor: LocalExecutor, tmp_path: Path, *, shared: bool = False) -> reqcache.RequirementCache:
    return reqcache.RequirementCache(
        tmp_path / "reqcache",
        max_bytes=256 * 1024 * 1024,
        shared=shared,
        interpreter={"test": 1},
        platform="t",
    )


@pytest.fixture
def cached(executor: LocalExecutor, tmp_path: Path) -> Iterator[reqcache.RequirementCache]:
    before = executor.requirement_cache
    executor.requirement_cache = _cache(executor, tmp_path)
    yield executor.requirement_cache
    executor.requirement_cache = before


def _report(outcome: object) -> dict[str, object]:
    assert outcome.status == "succeeded", outcome  # type: ignore[attr-defined]
    return json.loads(outcome.stdout)  # type: ignore[attr-defined]


async def test_second_job_reuses_the_entry_read_only(sx: Sandbox, cached: reqcache.RequirementCache) -> None:
    first = await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="a")
    assert _report(first)["six"] == "1.16.0"
    assert first.timing["dep_install_ms"] > 0
    await sx.executor.drain()
    [(_, size, entry)] = cached.entries()
    assert size > 0 and (entry / reqcache.MARKER).is_file()
    digest_before = reqcache.tree_digest(entry / "deps")[0]

    second = await sx.run(PROBE, requirements=["Six==1.16.0"], startup_timeout=120, tenant="a")
    report = _report(second)
    assert report["path"] == "/deps/six.py" and report["deps"] != "WRITABLE"
    assert second.timing["dep_install_ms"] == 0  # no install sandbox ran
    await sx.executor.drain()
    assert [e for _, _, e in cached.entries()] == [entry]
    assert reqcache.tree_digest(entry / "deps")[0] == digest_before  # nothing in the job changed it
    assert (entry / "deps" / "six.py").stat().st_uid == 0
    assert not (entry / "deps" / "six.py").stat().st_mode & 0o222


async def test_corrupted_entry_is_rebuilt(sx: Sandbox, cached: reqcache.RequirementCache) -> None:
    await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="a")
    await sx.executor.drain()
    [(_, _, entry)] = cached.entries()
    six_py = entry / "deps" / "six.py"
    six_py.chmod(0o644)
    six_py.write_text("raise SystemExit('corrupted cache entry used')\n")

    again = await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="a")
    assert _report(again)["six"] == "1.16.0"
    assert again.timing["dep_install_ms"] > 0  # rebuilt, not used
    await sx.executor.drain()
    [(_, _, rebuilt)] = cached.entries()
    assert cached.valid(rebuilt) and "corrupted" not in (rebuilt / "deps" / "six.py").read_text()


async def test_tenants_do_not_share_entries_unless_configured(
    sx: Sandbox, cached: reqcache.RequirementCache, tmp_path: Path
) -> None:
    await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="a")
    other = await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="b")
    assert _report(other)["six"] == "1.16.0"
    assert other.timing["dep_install_ms"] > 0  # tenant b installed its own
    await sx.executor.drain()
    scopes = {entry.parent for _, _, entry in cached.entries()}
    assert scopes == {cached.scope("a"), cached.scope("b")} and len(scopes) == 2

    shared = _cache(sx.executor, tmp_path / "shared", shared=True)
    sx.executor.requirement_cache = shared
    await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="a")
    reused = await sx.run(PROBE, requirements=REQS, startup_timeout=120, tenant="b")
    assert _report(reused)["six"] == "1.16.0" and reused.timing["dep_install_ms"] == 0
    await sx.executor.drain()
    assert len(shared.entries()) == 1


async def test_failed_install_caches_nothing(sx: Sandbox, cached: reqcache.RequirementCache) -> None:
    outcome = await sx.run("print(1)", requirements=["tako-no-such-package-xyz==0.0.1"], tenant="a")
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error["type"] == "dependency_error"
    await sx.executor.drain()
    assert cached.entries() == []
    assert not any((cached.root / ".staging").iterdir())
