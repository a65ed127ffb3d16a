"""The requirement cache's bookkeeping without sandboxes: keys, commit/lookup, partial and corrupt
entries, tenant scopes and LRU eviction (the sandbox tier tests it with real installs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tako_shim.backends.local import reqcache

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sealing an entry chowns it to root")

MIB = 1024 * 1024


def _cache(tmp_path: Path, max_bytes: int = 10 * MIB, shared: bool = False) -> reqcache.RequirementCache:
    return reqcache.RequirementCache(
        tmp_path / "c", max_bytes=max_bytes, shared=shared, interpreter={"version": "3.11"}, platform="x"
    )


def _build(
    cache: reqcache.RequirementCache, tenant: str, reqs: list[str], size: int = 1000
) -> reqcache.Lease:
    staged = cache.staging()
    (staged / "deps" / "pkg").mkdir()
    (staged / "deps" / "pkg" / "__init__.py").write_bytes(b"x" * size)
    return cache.commit(staged, tenant, reqs)


def test_key_normalises_spelling_and_order_but_not_versions() -> None:
    key = reqcache.cache_key
    assert key(["Foo_Bar==1.0", "six"], {}, "p") == key(["six", " foo-bar == 1.0"], {}, "p")
    assert key(["six==1.16.0"], {}, "p") != key(["six==1.15.0"], {}, "p")
    assert key(["six"], {"version": "3.11"}, "p") != key(["six"], {"version": "3.12"}, "p")
    assert key(["six"], {}, "linux-x86_64") != key(["six"], {}, "linux-aarch64")


def test_commit_then_lookup_is_sealed_and_leased(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    assert cache.lookup("t", ["six"]) is None
    lease = _build(cache, "t", ["six"])
    cache.release(lease)
    found = cache.lookup("t", ["SIX"])
    assert found is not None and found.entry == lease.entry
    init = found.deps / "pkg" / "__init__.py"
    assert init.stat().st_uid == 0 and not init.stat().st_mode & 0o222
    assert not (cache.root / ".staging").exists() or not any((cache.root / ".staging").iterdir())


@pytest.mark.parametrize("damage", ["no-marker", "changed", "removed", "added", "other-key"])
def test_partial_or_corrupt_entry_is_never_used(tmp_path: Path, damage: str) -> None:
    cache = _cache(tmp_path)
    lease = _build(cache, "t", ["six"])
    cache.release(lease)
    init = lease.deps / "pkg" / "__init__.py"
    if damage == "no-marker":
        (lease.entry / reqcache.MARKER).unlink()
    elif damage == "changed":
        init.chmod(0o644)
        with init.open("r+b") as fh:
            fh.write(b"y")
        os.utime(init, ns=(init.stat().st_atime_ns, init.stat().st_mtime_ns + 1))
    elif damage == "removed":
        init.unlink()
    elif damage == "added":
        (lease.deps / "pkg").chmod(0o755)
        (lease.deps / "pkg" / "evil.py").write_text("x")
    else:
        (lease.entry / reqcache.MARKER).chmod(0o644)
        (lease.entry / reqcache.MARKER).write_text('{"key": "0000"}')
    assert cache.lookup("t", ["six"]) is None
    assert not lease.entry.exists()  # removed, so the next job rebuilds it


def test_stale_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.max_age_seconds = 0.01
    cache.release(_build(cache, "t", ["six"]))
    time.sleep(0.05)
    assert cache.lookup("t", ["six"]) is None


def test_tenants_have_separate_scopes_unless_shared(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.release(_build(cache, "a", ["six"]))
    assert cache.lookup("b", ["six"]) is None
    shared = _cache(tmp_path / "s", shared=True)
    shared.release(_build(shared, "a", ["six"]))
    assert shared.lookup("b", ["six"]) is not None


def test_eviction_removes_least_recently_used_and_spares_leases(tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=2500)
    old = _build(cache, "t", ["a"])
    cache.release(old)
    held = _build(cache, "t", ["b"])  # still leased
    os.utime(old.entry, (1, 1))
    os.utime(held.entry, (2, 2))
    newest = _build(cache, "t", ["c"])  # 3000 bytes > 2500: the oldest unleased one goes
    assert not old.entry.exists()
    assert held.entry.exists() and newest.entry.exists()
    cache.release(newest)
    cache.release(held)
    cache.max_bytes = 1500
    os.utime(held.entry, (3, 3))  # used before newest was built
    cache.evict()
    assert not held.entry.exists() and newest.entry.exists()
    assert sum(size for _, size, _ in cache.entries()) <= 1500


def test_crash_leftovers_are_cleared_at_start(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    staged = cache.staging()
    (staged / "deps" / "half.py").write_text("x")
    again = _cache(tmp_path)
    assert not (again.root / ".staging").exists()


def test_for_executor_is_off_at_zero_and_keyed_on_the_roots_interpreter(tmp_path: Path) -> None:
    assert reqcache.for_executor(tmp_path, tmp_path / "root", 0, False) is None
    root = tmp_path / "root"
    root.mkdir()
    from tako_shim.backends.local import rootfs

    (root / rootfs.MANIFEST).write_text('{"python": {"version": "3.11.2", "magic": "a70d"}}')
    cache = reqcache.for_executor(tmp_path, root, 1, True)
    assert cache is not None and cache.max_bytes == MIB and cache.shared
    assert cache.interpreter == {"version": "3.11.2", "magic": "a70d"}
    assert cache.root == tmp_path / "requirements"


def test_server_jobs_carry_their_tenant_to_the_cache() -> None:
    from tako_shim.backends.local.backend import _sandbox_job
    from tako_shim.backends.local.store import JobRow
    from tako_shim.config import Settings

    row = JobRow(
        job_id="j", tenant="team-a", status="queued", job_type="default", created_at="now", code="print(1)",
        input_data={}, requirements=["six"], timeout=5, startup_timeout=30, code_hash="", input_hash="",
    )  # fmt: skip
    assert _sandbox_job(Settings(), row, {}, "512m", 1.0).tenant == "team-a"
