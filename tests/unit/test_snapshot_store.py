"""The pure parts of template snapshots (shim/tako_shim/backends/local/sandbox/snapshots.py): the image
key, the store's publish/lookup/rotation, the preload grammar and the fast teardown of a restore."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tako_shim.backends.local.sandbox import snapshots
from tako_shim.backends.local.sandbox.job import SandboxJob
from tako_shim.backends.local.sandbox.snapshots import (
    IMAGE,
    SnapshotStore,
    check_preload,
    default_preload,
    image_environment,
    remove_restored,
    shape_of,
    template_key,
)
from tako_shim.config import JobTypeConfig, Settings

JOB = SandboxJob("j", "print(1)", {}, [], 10, 10)
ENV = image_environment(b"runner code", "20240729", "systrap", {"python": "3.11.2"})


def test_the_key_changes_with_everything_the_image_embeds() -> None:
    base = template_key(shape_of(JOB), ENV)
    assert base == template_key(shape_of(JOB), dict(ENV))  # deterministic
    changed_env = [
        image_environment(b"runner code v2", "20240729", "systrap", {"python": "3.11.2"}),
        image_environment(b"runner code", "20250101", "systrap", {"python": "3.11.2"}),
        image_environment(b"runner code", "20240729", "ptrace", {"python": "3.11.2"}),
        image_environment(b"runner code", "20240729", "systrap", {"python": "3.12.0"}),
        image_environment(b"runner code", "20240729", "systrap", {"python": "3.11.2"}, b"oci.py v2"),
    ]
    changed_jobs = [
        dataclasses.replace(JOB, memory_limit_mb=256),
        dataclasses.replace(JOB, pids_limit=50),
        dataclasses.replace(JOB, cpu_limit=0.5),
        dataclasses.replace(JOB, max_total_artifact_bytes=1024),
        dataclasses.replace(JOB, preload=("pandas",)),
    ]
    keys = {template_key(shape_of(JOB), env) for env in changed_env}
    keys |= {template_key(shape_of(job), ENV) for job in changed_jobs}
    keys.add(template_key(shape_of(JOB, "/cache/entry/deps@digest"), ENV))
    assert base not in keys and len(keys) == len(changed_env) + len(changed_jobs) + 1
    # what does not change the sandbox does not change the key
    same = dataclasses.replace(JOB, code="print(2)", job_id="other", timeout=99, environment={"A": "b"})
    assert template_key(shape_of(same), ENV) == base


def test_the_default_preload_is_the_runners_own_imports() -> None:
    preload = default_preload()
    assert {"json", "os", "sys", "re", "time"} <= set(preload)
    assert "__future__" not in preload
    assert shape_of(JOB).preload == preload
    assert shape_of(dataclasses.replace(JOB, preload=())).preload == ()


def test_preload_names_are_module_names_only() -> None:
    assert check_preload(["pandas", "numpy.linalg"]) == ["pandas", "numpy.linalg"]
    for bad in ["os; import x", "../x", "", "a..b", "1abc"]:
        with pytest.raises(ValueError, match="not a module name"):
            check_preload([bad])
    with pytest.raises(ValueError, match="limit is 50"):
        check_preload([f"m{i}" for i in range(51)])
    assert JobTypeConfig(name="df", preload=["pandas"]).preload == ["pandas"]
    with pytest.raises(ValidationError, match="not a module name"):
        JobTypeConfig(name="df", preload=["pandas; rm"])


def test_settings_switch_and_max_age() -> None:
    settings = Settings()
    assert settings.snapshots_enabled is True and settings.snapshot_max_age_seconds == 86_400
    with pytest.raises(ValidationError, match="snapshot_max_age_seconds"):
        Settings(snapshot_max_age_seconds=10)


def _build(store: SnapshotStore, key: str, now: float) -> Path:
    staged = store.staging()
    (staged / IMAGE / "pages").write_bytes(b"x" * 10)
    return store.publish(staged, key, {"spec": {}}, now=now)


def test_an_entry_appears_only_once_published(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", max_age_s=100)
    assert store.lookup("k1") is None
    staged = store.staging()
    assert store.lookup("k1") is None  # a build in progress is invisible
    (staged / IMAGE / "pages").write_bytes(b"x")
    image = store.publish(staged, "k1", {"spec": {"a": 1}}, now=1000)
    assert store.lookup("k1", now=1050) == image
    assert store.meta("k1")["spec"] == {"a": 1}
    assert not staged.exists()
    assert (tmp_path / "snapshots").stat().st_mode & 0o777 == 0o700


def test_lookup_refuses_expired_foreign_and_broken_entries(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_age_s=100)
    _build(store, "k1", now=1000)
    assert store.lookup("k1", now=1101) is None  # too old
    (tmp_path / "k2").mkdir()
    (tmp_path / "k2" / IMAGE).mkdir()
    (tmp_path / "k2" / "meta.json").write_text(json.dumps({"key": "k1", "created_at": 1000}))
    assert store.lookup("k2", now=1000) is None  # a marker for another key
    (tmp_path / "k3").mkdir()
    (tmp_path / "k3" / "meta.json").write_text("{not json")
    assert store.lookup("k3", now=1000) is None


def test_rotation_removes_expired_entries_and_dead_builds(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_age_s=100)
    _build(store, "old", now=1000)
    _build(store, "new", now=1090)
    dead = store.staging()
    assert sorted(store.rotate(now=1150)) == ["old"]  # the staging dir is recent (mtime: now)
    assert store.lookup("new", now=1150) is not None and dead.exists()
    assert dead.name in store.rotate(now=dead.stat().st_mtime + 3601)


def test_republish_and_discard(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_age_s=100)
    _build(store, "k", now=1000)
    newer = _build(store, "k", now=1050)
    assert store.lookup("k", now=1120) == newer
    store.discard("k")
    assert store.lookup("k", now=1120) is None and not (tmp_path / "k").exists()
    store.discard("k")  # idempotent


def test_restore_teardown_removes_state_only_once_the_cgroups_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cid = "tako-x-snap-1"
    files = [
        state / f"{cid}_sandbox:{cid}.state",
        state / f"{cid}_sandbox:{cid}.lock",
        state / f"runsc-{cid}.sock",
    ]
    other = state / "tako-y_sandbox:tako-y.state"
    for path in [*files, other]:
        path.write_text("")
    busy = tmp_path / "cg" / cid
    busy.mkdir(parents=True)
    monkeypatch.setattr(snapshots.cgroups, "remove_dirs", lambda dirs: None)  # a process still in it
    assert not remove_restored(state, cid, [busy])
    assert all(path.exists() for path in files)
    monkeypatch.setattr(snapshots.cgroups, "remove_dirs", lambda dirs: [d.rmdir() for d in dirs])
    assert remove_restored(state, cid, [busy])
    assert not any(path.exists() for path in files) and other.exists()


async def test_a_job_types_preload_reaches_the_sandbox_job(tmp_path: Path) -> None:
    from test_shim_queue import FakeOutcome

    from tako_shim.backends.local.backend import LocalBackend
    from tako_vm.models.wire import ExecuteRequest

    seen: list[SandboxJob] = []

    class Recording:
        def runtime_info(self) -> dict[str, str]:
            return {"runtime": "fake"}

        async def run(self, job: SandboxJob, artifact_dir: Path, cancel: object = None) -> FakeOutcome:
            seen.append(job)
            return FakeOutcome("succeeded", "ok")

    settings = Settings(data_dir=tmp_path, job_types=[JobTypeConfig(name="df", preload=["csv", "decimal"])])
    backend = LocalBackend(settings, executor_factory=lambda _: Recording())
    await backend.start()
    try:
        for job_type in ("df", None):
            sub = await backend.submit(
                "default", backend.resolver.resolve(ExecuteRequest(code="1", job_type=job_type))
            )
            assert await backend.wait_for("default", sub.job_id, 10) is not None
    finally:
        await backend.close()
    assert [job.preload for job in seen] == [("csv", "decimal"), None]
