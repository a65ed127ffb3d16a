"""Template snapshots (shim/tako_shim/backends/local/sandbox/snapshots.py) against real runsc: every job
is a fresh, single-use restore of its shape's image; nothing random is shared between restores; a
changed job type gets its own image; a broken image falls back to a cold start; the attacks the cold
path stops are stopped on restored sandboxes too; the frame key stays out of user code's reach."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import cgroup_leftovers, make_job, real_executor
from test_forgery import FORGED, KEY_PROBE, record_frame_keys, written_then_killed
from test_isolation import NETWORK_ATTACKS

from tako_runner.outcome import Outcome
from tako_shim.backends.local.sandbox.executor import LocalExecutor
from tako_shim.backends.local.sandbox.snapshots import IMAGE, Snapshots
from tako_shim.backends.local.sandbox.warmpool import WarmPool

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def snap_executor() -> Iterator[LocalExecutor]:
    yield from real_executor("tako-snapshot-tests-", snapshots=True)


@pytest.fixture
async def ex(snap_executor: LocalExecutor) -> AsyncIterator[LocalExecutor]:
    yield snap_executor
    await snap_executor.drain()


def snaps(ex: LocalExecutor) -> Snapshots:
    assert ex.snapshots is not None
    return ex.snapshots


async def restored(ex: LocalExecutor, tmp_path: Path, code: str, **overrides: Any) -> Outcome:
    """Run one job and check that it really ran in a restore of its (first built) template."""
    job = make_job(code, **overrides)
    shape = ex.snapshot_shape(job, None)
    assert shape is not None
    assert await snaps(ex).ensure(shape) is not None, snaps(ex).stats
    before = dict(snaps(ex).stats)
    outcome = await ex.run(job, tmp_path / "artifacts")
    assert snaps(ex).stats["restored"] == before["restored"] + 1, snaps(ex).stats
    assert snaps(ex).stats["fallbacks"] == before["fallbacks"]
    return outcome


def containers(ex: LocalExecutor) -> str:
    assert ex.runsc is not None
    argv = [ex.runsc, "--root", str(ex._state_dir), "list"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


FINGERPRINT = (
    "import json, os, random, tempfile, uuid\n"
    "print(json.dumps({'random': random.random(), 'uuid': str(uuid.uuid4()),\n"
    "    'urandom': os.urandom(16).hex(),\n"
    "    'tempname': os.path.basename(tempfile.mktemp()), 'tmp': sorted(os.listdir('/tmp')),\n"
    "    'cwd': os.getcwd(), 'cwd_list': sorted(os.listdir('.')), 'pid': os.getpid()}))\n"
    "open('/tmp/left-behind', 'w').write('1')\n"
)


async def test_two_restores_of_one_image_share_no_randomness_and_start_empty(
    ex: LocalExecutor, tmp_path: Path
) -> None:
    first = await restored(ex, tmp_path, FINGERPRINT)
    second = await restored(ex, tmp_path, FINGERPRINT)
    assert first.status == second.status == "succeeded", (first, second)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    for name in ("random", "uuid", "urandom", "tempname"):
        assert a[name] != b[name], name
    assert a["tmp"] == b["tmp"] == []  # the first job's /tmp/left-behind is not in the second
    assert a["cwd_list"] == b["cwd_list"] == []


async def test_a_restored_sandbox_runs_one_job_and_is_removed(ex: LocalExecutor, tmp_path: Path) -> None:
    for n in range(2):
        outcome = await restored(ex, tmp_path, f"print({n} * 3)")
        assert outcome.stdout == f"{n * 3}\n"
    used = list(snaps(ex).used_sandboxes)[-2:]
    assert len(set(used)) == 2 and all("-snap-" in cid for cid in used)
    await ex.drain()
    listing = containers(ex)
    assert not any(cid in listing for cid in used), listing
    assert not any(cid in path.name for cid in used for path in ex._state_dir.iterdir())
    assert not any(ex._cgroup_dirs(cid)[0].exists() for cid in used)
    assert not [d for cid in used for d in cgroup_leftovers(ex, cid)]  # no hierarchy (a restore joins all)
    pgrep = ["pgrep", "-af", "|".join(used)]
    leftover = (await asyncio.to_thread(subprocess.run, pgrep, capture_output=True, text=True)).stdout
    assert not leftover, leftover  # no Sentry or gofer outlives its job


async def test_a_changed_job_type_gets_its_own_template(ex: LocalExecutor, tmp_path: Path) -> None:
    code = "import sys\nprint('csv' in sys.modules, 'decimal' in sys.modules)\n"
    csv = await restored(ex, tmp_path, code, preload=("csv",))
    decimal = await restored(ex, tmp_path, code, preload=("decimal",))
    assert csv.stdout == "True False\n"
    assert decimal.stdout == "False True\n"
    shapes = [ex.snapshot_shape(make_job("", preload=p), None) for p in (("csv",), ("decimal",))]
    keys = {snaps(ex).key(shape) for shape in shapes if shape is not None}
    assert len(keys) == 2 and all((snaps(ex).store.root / key / IMAGE).is_dir() for key in keys)


async def test_a_corrupt_image_falls_back_to_a_cold_start(ex: LocalExecutor, tmp_path: Path) -> None:
    job = make_job("print('cold but fine')", memory_limit_mb=384)
    shape = ex.snapshot_shape(job, None)
    assert shape is not None
    image = await snaps(ex).ensure(shape)
    assert image is not None
    for path in image.iterdir():
        path.write_bytes(b"corrupt")
    before = dict(snaps(ex).stats)
    outcome = await ex.run(job, tmp_path / "artifacts")
    assert outcome.status == "succeeded", outcome
    assert outcome.stdout == "cold but fine\n"
    assert snaps(ex).stats["fallbacks"] == before["fallbacks"] + 1
    assert snaps(ex).stats["restored"] == before["restored"]
    key = snaps(ex).key(shape)
    assert snaps(ex).store.lookup(key) is None  # discarded
    assert snaps(ex).image(shape) is None and key not in snaps(ex)._building  # cold for a while, no rebuild
    snaps(ex)._retry_at[key] = 0.0  # as if RETRY_AFTER_FAILURE_S had passed: rebuilt on demand
    again = await restored(ex, tmp_path, "print('restored again')", memory_limit_mb=384)
    assert again.stdout == "restored again\n"


async def test_a_template_that_cannot_be_built_is_not_retried_by_every_job(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host where checkpoint fails, jobs run cold without each paying for another build attempt."""
    attempts = 0

    async def failing_checkpoint(key: str, shape: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("checkpoint not supported here")

    monkeypatch.setattr(snaps(ex), "_checkpoint", failing_checkpoint)
    job = make_job("print('cold')", memory_limit_mb=352)
    shape = ex.snapshot_shape(job, None)
    assert shape is not None
    assert await snaps(ex).ensure(shape) is None and attempts == 1
    failures = snaps(ex).stats["build_failures"]
    for n in range(2):
        outcome = await ex.run(make_job("print('cold')", memory_limit_mb=352), tmp_path / f"artifacts-{n}")
        assert outcome.status == "succeeded" and outcome.stdout == "cold\n", outcome
    await ex.drain()
    assert attempts == 1 and snaps(ex).stats["build_failures"] == failures


async def test_memory_bomb_on_a_restored_sandbox_ends_as_oom(ex: LocalExecutor, tmp_path: Path) -> None:
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n"
    outcome = await restored(ex, tmp_path, code, memory_limit_mb=256)
    assert outcome.status == "oom", outcome


async def test_fork_bomb_on_a_restored_sandbox_hits_the_pids_limit(ex: LocalExecutor, tmp_path: Path) -> None:
    code = (
        "import os, time\ncount = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(60)\n            os._exit(0)\n        count += 1\n"
        "except OSError as exc:\n    print(count, exc.errno)\n"
    )
    outcome = await restored(ex, tmp_path, code, pids_limit=40)
    assert outcome.status == "succeeded", outcome
    forked, errno = (int(x) for x in outcome.stdout.split())
    assert errno == 11 and 0 < forked < 40


async def test_deadline_on_a_restored_sandbox(ex: LocalExecutor, tmp_path: Path) -> None:
    outcome = await restored(ex, tmp_path, "while True:\n    pass\n", timeout=1)
    assert outcome.status == "timeout", outcome
    assert outcome.error is not None and outcome.error["type"] == "execution_timeout"


async def test_no_network_on_a_restored_sandbox(ex: LocalExecutor, tmp_path: Path) -> None:
    outcome = await restored(ex, tmp_path, NETWORK_ATTACKS)
    assert outcome.status == "succeeded", outcome
    results = json.loads(outcome.stdout)
    assert set(results.pop("interfaces")) <= {"lo"}
    assert not {name for name, value in results.items() if value == "OPEN"}, results
    assert len(results) == 9


async def test_the_frame_key_is_out_of_user_codes_reach(
    ex: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key reaches pid 1 after the restore; user code runs in the pre-started child, never in it."""
    keys = record_frame_keys(monkeypatch)
    outcome = await restored(ex, tmp_path, KEY_PROBE + "print('globals', sorted(globals()))\n")
    assert outcome.status == "succeeded", outcome
    assert len(keys) == 1 and len(keys[0]) == 64
    assert "mem refused PermissionError" in outcome.stdout
    assert "stdin b''" in outcome.stdout
    assert keys[0].decode() not in outcome.stdout + outcome.stderr


async def test_a_forged_frame_then_a_killed_launcher_is_not_trusted(
    ex: LocalExecutor, tmp_path: Path
) -> None:
    outcome = await restored(ex, tmp_path, written_then_killed(FORGED))
    assert outcome.status == "failed", outcome
    assert outcome.output is None


async def test_the_warm_pool_holds_restored_sandboxes(ex: LocalExecutor, tmp_path: Path) -> None:
    pool = WarmPool(ex, 1)
    shape = ex.snapshot_shape(pool.template, None)
    assert shape is not None and await snaps(ex).ensure(shape) is not None
    try:
        assert await pool.wait_ready(1, within_s=60), pool.stats
        assert pool._ready[0].restored
        first = await pool.run(make_job(FINGERPRINT), tmp_path / "a")
        assert await pool.wait_ready(1, within_s=60), pool.stats
        second = await pool.run(make_job(FINGERPRINT), tmp_path / "b")
    finally:
        await pool.close()
    assert pool.stats["warm_runs"] == 2 and pool.stats["restored_starts"] >= 2, pool.stats
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["random"] != b["random"] and a["urandom"] != b["urandom"] and b["tmp"] == []
    used = list(pool.used_sandboxes)
    assert len(set(used)) == 2
    await asyncio.sleep(0.5)
    listing = containers(ex)
    assert not any(cid in listing for cid in used), listing
    await ex.drain()
    assert not [d for cid in used for d in cgroup_leftovers(ex, cid)]


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nprint('out')\nsys.exit('bye')\n",
        "import sys\nsys.exit(3)\n",
        "import atexit, threading, time\natexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('main done')\n",
        "def f():\n    return undefined_name\nf()\n",
    ],
    ids=["exit-message", "exit-status", "atexit-and-threads", "traceback"],
)
async def test_a_restored_job_ends_exactly_as_a_cold_one(
    ex: LocalExecutor, executor: LocalExecutor, tmp_path: Path, code: str
) -> None:
    """The pre-started interpreter skips Python's teardown (``os._exit``) but not what a program sees:
    SystemExit's status and message, non-daemon threads, atexit handlers, tracebacks."""
    warm = await restored(ex, tmp_path, code)
    cold = await executor.run(make_job(code), tmp_path / "cold")
    assert (warm.status, warm.exit_code, warm.stdout, warm.stderr) == (
        cold.status, cold.exit_code, cold.stdout, cold.stderr,
    )  # fmt: skip
    assert warm.error == cold.error


async def test_a_template_build_is_off_the_request_path_and_leaves_no_sandbox(
    ex: LocalExecutor, tmp_path: Path
) -> None:
    """The first job of a shape runs cold while its template is built in the background; drain waits
    for the build, which deletes its template sandbox after the checkpoint."""
    job = make_job("print('first')", pids_limit=77)
    shape = ex.snapshot_shape(job, None)
    assert shape is not None and snaps(ex).store.lookup(snaps(ex).key(shape)) is None
    before = dict(snaps(ex).stats)
    outcome = await ex.run(job, tmp_path / "artifacts")
    assert outcome.stdout == "first\n" and snaps(ex).stats["restored"] == before["restored"]
    await ex.drain()
    assert snaps(ex).stats["built"] == before["built"] + 1
    assert snaps(ex).store.lookup(snaps(ex).key(shape)) is not None
    assert "tako-tmpl-" not in containers(ex)
