"""The warm pool (shim/tako_shim/backends/local/sandbox/warmpool.py) against real runsc: single use,
refill, the same isolation and classification as a cold run, and clean shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from sandbox_support import Sandbox, make_job
from test_forgery import FORGED, written_then_killed

from tako_shim.backends.local.sandbox.executor import LocalExecutor
from tako_shim.backends.local.sandbox.warmpool import WarmPool, fits, job_config

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture
async def pool(executor: LocalExecutor) -> AsyncIterator[WarmPool]:
    warm = WarmPool(executor, 1)
    assert await warm.wait_ready(within_s=60), warm.stats
    yield warm
    await warm.close()


async def run_warm(pool: WarmPool, tmp_path: Path, code: str, **overrides: Any) -> Any:
    """Run one job and check that it really took a warm sandbox."""
    assert await pool.wait_ready(1, within_s=60)
    before = pool.stats["warm_runs"]
    outcome = await pool.run(make_job(code, **overrides), tmp_path / "artifacts")
    assert pool.stats["warm_runs"] == before + 1, pool.stats
    return outcome


def runsc_containers(executor: LocalExecutor) -> str:
    assert executor.runsc is not None
    argv = [executor.runsc, "--root", str(executor._state_dir), "list"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


async def test_a_warm_job_sees_its_code_and_input_and_the_pool_refills(
    pool: WarmPool, tmp_path: Path
) -> None:
    code = (
        "import json\n"
        "data = json.load(open('/input/data.json'))\n"
        "json.dump({'doubled': data['n'] * 2}, open('/output/result.json', 'w'))\n"
        "print('n =', data['n'])\n"
    )
    outcome = await run_warm(pool, tmp_path, code, input_data={"n": 21})
    assert outcome.status == "succeeded", outcome
    assert outcome.stdout == "n = 21\n"
    assert outcome.output == {"doubled": 42}
    assert outcome.runtime == "runsc"
    # the used sandbox is replaced in the background
    assert await pool.wait_ready(1, within_s=60)
    assert pool.stats["started"] == 2


async def test_two_jobs_never_share_a_sandbox(
    pool: WarmPool, executor: LocalExecutor, tmp_path: Path
) -> None:
    first = await run_warm(
        pool,
        tmp_path,
        "import os\nopen('/tmp/left-behind', 'w').write('1')\nprint(os.path.exists('/tmp/left-behind'))\n",
    )
    second = await run_warm(
        pool, tmp_path, "import os\nprint(os.path.exists('/tmp/left-behind'), os.listdir('/tmp'))\n"
    )
    assert first.stdout == "True\n"
    assert second.stdout == "False []\n"
    used = list(pool.used_sandboxes)
    assert len(used) == 2 and used[0] != used[1]
    await asyncio.sleep(0.5)  # the used sandboxes are deleted in the background
    listing = runsc_containers(executor)
    assert used[0] not in listing and used[1] not in listing


async def test_code_and_input_stay_read_only(pool: WarmPool, tmp_path: Path) -> None:
    code = (
        "import os\n"
        "for path in ('/code/main.py', '/code/job.json', '/input/data.json', '/code/new', '/input/new'):\n"
        "    try:\n"
        "        open(path, 'a').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
    )
    outcome = await run_warm(pool, tmp_path, code)
    assert outcome.status == "succeeded", outcome
    assert "WROTE" not in outcome.stdout
    assert outcome.stdout.count("refused") == 5


async def test_user_code_sees_what_a_cold_run_shows(
    pool: WarmPool, executor: LocalExecutor, tmp_path: Path
) -> None:
    """The pre-started interpreter looks like a fresh one: argv, path, env, __main__, tracebacks."""
    code = (
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'path0': sys.path[0], 'env': dict(os.environ),\n"
        "    'name': __name__, 'file': __file__, 'cwd': os.getcwd(), 'uid': os.getuid(),\n"
        "    'main': sys.modules['__main__'].__dict__.get('marker'), 'flags_u': sys.flags.isolated}))\n"
        "marker = 1\n"
        "def f():\n    return undefined_name\n"
        "f()\n"
    )
    warm = await run_warm(pool, tmp_path, code)
    cold = await executor.run(make_job(code), tmp_path / "cold")
    assert warm.status == cold.status == "failed"
    assert warm.error == cold.error and warm.error is not None and warm.error["type"] == "name_error"
    assert warm.exit_code == cold.exit_code == 1
    assert warm.stderr == cold.stderr
    assert json.loads(warm.stdout) == json.loads(cold.stdout)
    syntax_warm = await run_warm(pool, tmp_path, "def broken(:\n")
    syntax_cold = await executor.run(make_job("def broken(:\n"), tmp_path / "cold")
    assert syntax_warm.stderr == syntax_cold.stderr
    assert syntax_warm.error is not None and syntax_warm.error["type"] == "syntax_error"


async def test_job_environment_reaches_user_code(pool: WarmPool, tmp_path: Path) -> None:
    code = "import os\nprint(os.environ['GREETING'])\n"
    outcome = await run_warm(pool, tmp_path, code, environment={"GREETING": "hello"})
    assert outcome.stdout == "hello\n"


async def test_deadline_is_enforced_in_a_warm_sandbox(pool: WarmPool, tmp_path: Path) -> None:
    outcome = await run_warm(pool, tmp_path, "while True:\n    pass\n", timeout=1)
    assert outcome.status == "timeout", outcome
    assert outcome.error is not None and outcome.error["type"] == "execution_timeout"


async def test_cancel_reaches_a_warm_job(pool: WarmPool, tmp_path: Path) -> None:
    assert await pool.wait_ready(1, within_s=60)
    cancel = asyncio.Event()
    task = asyncio.create_task(pool.run(make_job("import time\ntime.sleep(30)\n"), tmp_path, cancel))
    await asyncio.sleep(1.0)
    cancel.set()
    outcome = await asyncio.wait_for(task, 20)
    assert outcome.status == "cancelled", outcome
    assert pool.stats["warm_runs"] == 1


async def test_forged_frame_then_killed_launcher_is_not_trusted(pool: WarmPool, tmp_path: Path) -> None:
    outcome = await run_warm(pool, tmp_path, written_then_killed(FORGED))
    assert outcome.status == "failed", outcome
    assert outcome.output is None
    await Sandbox(cast(LocalExecutor, pool), tmp_path).assert_healthy()


async def test_jobs_that_need_another_sandbox_bypass_the_pool(pool: WarmPool, tmp_path: Path) -> None:
    assert fits(make_job("x"), pool.template)
    assert not fits(make_job("x", requirements=["six"]), pool.template)
    assert not fits(make_job("x", memory_limit_mb=256), pool.template)
    assert not fits(make_job("x", cpu_limit=0.5), pool.template)
    outcome = await pool.run(make_job("print('cold')", memory_limit_mb=256), tmp_path)
    assert outcome.stdout == "cold\n"
    assert pool.stats == {**pool.stats, "warm_runs": 0, "cold_runs": 1}


async def test_close_destroys_idle_sandboxes(executor: LocalExecutor) -> None:
    warm = WarmPool(executor, 2)
    assert await warm.wait_ready(within_s=60)
    idle = list(warm._ready)
    await warm.close()
    assert all(sandbox.process.returncode is not None for sandbox in idle)
    assert not any(sandbox.job_dir.exists() for sandbox in idle)
    listing = runsc_containers(executor)
    assert not any(sandbox.cid in listing for sandbox in idle)
    outcome = await warm.run(make_job("print(2)"), executor.work_dir / "after-close")
    assert outcome.stdout == "2\n" and warm.stats["cold_runs"] == 1


def test_disabled_pool_runs_everything_cold(executor: LocalExecutor, tmp_path: Path) -> None:
    warm = WarmPool(executor, 0)
    assert not warm.enabled
    assert warm.runtime_info()["warm_pool_size"] == 0
    with pytest.raises(ValueError, match="warm_pool_size"):
        WarmPool(executor, -1)


def test_warm_runner_config_is_the_cold_one_without_the_boot_time_probe(executor: LocalExecutor) -> None:
    job = make_job("print(1)", environment={"A": "b"}, timeout=7, max_stdout_bytes=2048)
    staged, _ = executor._prepare_job_dir(job)
    try:
        cold = json.loads((staged / "code" / "job.json").read_text())
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    assert cold["egress_probe"] is True
    assert job_config(job) == {**cold, "egress_probe": False}


async def test_warm_user_code_cannot_read_the_frame_key(
    pool: WarmPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key comes with ``go``, after the user interpreter was pre-started: user code finds it nowhere."""
    from tako_shim.backends.local.sandbox import warmpool as warmpool_module

    keys: list[str] = []
    token_hex = warmpool_module.secrets.token_hex

    def recording(nbytes: int) -> str:
        value = token_hex(nbytes)
        keys.append(value)
        return value

    monkeypatch.setattr(warmpool_module.secrets, "token_hex", recording)
    places = ["/proc/1/fd/0", "/proc/1/environ", "/proc/1/cmdline", "/proc/self/environ"]
    code = f"import pathlib\nprint({{p: pathlib.Path(p).read_bytes() for p in {places!r}}})\n"
    outcome = await run_warm(pool, tmp_path, code)
    assert outcome.status == "succeeded", outcome
    key = next(value for value in keys if len(value) == 64)
    assert key not in outcome.stdout + outcome.stderr
    assert "'/proc/1/fd/0': b''" in outcome.stdout  # /dev/null by the time user code runs
