"""The executor end to end: results, classification, artifacts, parallel jobs, cancel, strict/permissive."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from sandbox_support import Sandbox, cgroup_leftovers, make_job

from tako_shim.backends.local.sandbox import cgroups
from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxUnavailable

pytestmark = pytest.mark.sandbox


async def test_success_with_input_output_and_artifacts(sx: Sandbox) -> None:
    code = (
        "import json\n"
        "data = json.load(open('/input/data.json'))\n"
        "print('sum', sum(data['xs']))\n"
        "json.dump({'total': sum(data['xs'])}, open('/output/result.json', 'w'))\n"
        "open('/output/report.csv', 'w').write('a,b\\n1,2\\n')\n"
    )
    outcome = await sx.run(code, input_data={"xs": [1, 2, 3]})
    assert outcome.status == "succeeded", outcome
    assert outcome.exit_code == 0 and outcome.error is None
    assert outcome.stdout == "sum 6\n"
    assert outcome.output == {"total": 6}
    assert outcome.runtime == "runsc"
    names = {a["name"]: a for a in outcome.artifacts}
    assert set(names) == {"report.csv", "result.json"}
    csv = (sx.artifacts / "report.csv").read_bytes()
    assert names["report.csv"]["sha256"] == hashlib.sha256(csv).hexdigest()
    assert names["report.csv"]["content_type"] == "text/csv"
    assert outcome.timing["phase_at_exit"] == "completed"
    assert outcome.timing["execution_ms"] > 0 and outcome.timing["total_ms"] >= outcome.timing["execution_ms"]
    assert outcome.resource_usage is not None and outcome.resource_usage["max_rss_mb"] > 1


@pytest.mark.parametrize(
    ("code", "error_type", "exit_code"),
    [
        ("def f(:\n", "syntax_error", 1),
        ("import no_such_module_xyz\n", "import_error", 1),
        ("print(undefined_name)\n", "name_error", 1),
        ("raise RuntimeError('boom')\n", "runtime_error", 1),
        ("import sys\nsys.exit(7)\n", "runtime_error", 7),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "segfault", 139),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed", 137),
    ],
    ids=["syntax", "import", "name", "runtime", "exit7", "segv", "sigkill"],
)
async def test_failures_are_classified(sx: Sandbox, code: str, error_type: str, exit_code: int) -> None:
    outcome = await sx.run(code)
    assert outcome.status == "failed", outcome
    assert outcome.exit_code == exit_code
    assert outcome.error is not None and outcome.error["type"] == error_type, outcome.error
    assert outcome.error["phase"] == "execution"


async def test_non_object_result_json_is_not_output(sx: Sandbox) -> None:
    outcome = await sx.run("open('/output/result.json', 'w').write('[1, 2]')")
    assert outcome.status == "succeeded"
    assert outcome.output is None
    assert [a["name"] for a in outcome.artifacts] == ["result.json"]


async def test_four_jobs_in_parallel(executor: LocalExecutor, tmp_path: Path) -> None:
    code = "import json, time\nx = json.load(open('/input/data.json'))['n']\ntime.sleep(0.5)\nprint(x * x)\n"
    jobs = [make_job(code, job_id=f"par-{n}", input_data={"n": n}) for n in range(5)]
    outcomes = await asyncio.gather(*(executor.run(j, tmp_path / j.job_id) for j in jobs))
    assert [o.status for o in outcomes] == ["succeeded"] * 5
    assert [o.stdout for o in outcomes] == [f"{n * n}\n" for n in range(5)]


async def test_cancel_kills_the_sandbox(executor: LocalExecutor, tmp_path: Path) -> None:
    cancel = asyncio.Event()
    task = asyncio.create_task(
        executor.run(make_job("import time\ntime.sleep(60)\n", timeout=60), tmp_path, cancel)
    )
    await asyncio.sleep(1.0)
    started = time.monotonic()
    cancel.set()
    outcome = await task
    assert time.monotonic() - started < 10  # kill + teardown, generous for a loaded machine
    assert outcome.status == "cancelled"
    assert outcome.error is not None and outcome.error["type"] == "cancelled"


async def test_environment_reaches_user_code(sx: Sandbox) -> None:
    outcome = await sx.run("import os\nprint(os.environ['MY_SETTING'])", environment={"MY_SETTING": "v1"})
    assert outcome.stdout == "v1\n"


def test_strict_mode_refuses_without_runsc(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        LocalExecutor(work_dir=tmp_path, security_mode="strict", runsc_path="/nonexistent/runsc")
    message = str(info.value)
    assert "scripts/install-system.sh" in message and "apt-get install runsc" in message


def test_strict_mode_refuses_a_broken_runsc(tmp_path: Path) -> None:
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'runsc version 0.0'\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="could not start a sandbox"):
        LocalExecutor(work_dir=tmp_path / "w", security_mode="strict", runsc_path=str(fake))


def test_unknown_security_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="security_mode"):
        LocalExecutor(work_dir=tmp_path, security_mode="relaxed")


async def test_permissive_mode_falls_back_loudly_and_records_the_runtime(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = LocalExecutor(
        work_dir=tmp_path / "w", security_mode="permissive", runsc_path="/nonexistent/runsc"
    )
    assert "SECURITY WARNING" in caplog.text
    assert fallback.runtime_info()["runtime"] == "none"
    code = "import json, os\nprint(json.load(open(os.environ['TAKO_INPUT_PATH']))['a'], os.getuid())\n"
    code += "open(os.environ['TAKO_OUTPUT_DIR'] + '/r.txt', 'w').write('art')\n"
    outcome = await fallback.run(make_job(code, input_data={"a": 42}), tmp_path / "art")
    assert outcome.status == "succeeded", outcome
    assert outcome.stdout == "42 65534\n"  # dropped to nobody even without a sandbox
    assert [a["name"] for a in outcome.artifacts] == ["r.txt"]  # copied as a file, like a sandbox's
    assert (tmp_path / "art" / "r.txt").read_text() == "art"
    assert outcome.runtime == "none"
    slow = await fallback.run(make_job("import time\ntime.sleep(100)", timeout=1), tmp_path / "art")
    assert slow.status == "timeout"


def test_runtime_info_reports_runsc(executor: LocalExecutor) -> None:
    info = executor.runtime_info()
    assert info["runtime"] == "runsc"
    assert info["platform"] in ("systrap", "ptrace")
    assert info["version"]
    assert info["cgroup"] == cgroups.detect_version(Path("/proc/self/mountinfo").read_text())


def test_strict_mode_refuses_without_a_usable_cgroup_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without the controllers (here: the detection pointed at an empty directory and a mountinfo
    with no cgroup filesystem, since this host has them) fails closed in one line naming what is missing;
    permissive mode falls back to no sandbox, loudly."""
    real_open_host = cgroups.open_host
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("1 0 0:1 / / rw - ext4 /dev/sda rw\n")

    def without_cgroups() -> cgroups.Cgroups:
        return real_open_host(tmp_path / "no-cgroupfs", mountinfo, Path("/proc/self/cgroup"))

    monkeypatch.setattr(cgroups, "open_host", without_cgroups)
    with pytest.raises(SandboxUnavailable) as caught:
        LocalExecutor(work_dir=tmp_path / "w")
    message = str(caught.value)
    assert message.startswith("no usable cgroup controller: no cgroup filesystem is mounted at ")
    assert "memory, pids and cpu" in message and "\n" not in message
    fallback = LocalExecutor(work_dir=tmp_path / "p", security_mode="permissive")
    assert fallback.runtime_info()["runtime"] == "none"


async def test_latency_of_print_1_is_recorded(executor: LocalExecutor, tmp_path: Path) -> None:
    """Not a timed assertion: prints the executor's print(1) latency for the record (see docs/sandbox.md)."""
    times = []
    for n in range(3):
        started = time.monotonic()
        outcome = await executor.run(make_job("print(1)", job_id=f"lat-{n}"), tmp_path)
        times.append(time.monotonic() - started)
        assert outcome.stdout == "1\n"
    print(f"executor print(1): {json.dumps(sorted(round(t, 3) for t in times))} s")


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/bin/runsc").exists(), reason="Debian bookworm's /usr/bin/runsc is not installed"
)
async def test_bookworm_runsc_fallback_works_on_ptrace(tmp_path: Path) -> None:
    """The fallback install-system.sh uses when the trixie build cannot be fetched."""
    old = LocalExecutor(work_dir=tmp_path / "w", runsc_path="/usr/bin/runsc")
    info = old.runtime_info()
    assert info["runtime"] == "runsc" and info["platform"] in ("ptrace", "systrap")
    outcome = await old.run(make_job("import os\nprint(os.uname().release)"), tmp_path / "art")
    assert outcome.status == "succeeded" and outcome.stdout == "4.4.0\n"
    bomb = await old.run(
        make_job("b = []\nwhile True:\n    b.append(bytearray(16 << 20))\n", memory_limit_mb=256),
        tmp_path / "art",
    )
    assert bomb.status == "oom", bomb


def test_a_restarted_executor_removes_sandboxes_a_crashed_one_left_running(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    first = LocalExecutor(work_dir=work)
    cid = f"tako-crashed-run-{secrets.token_hex(4)}"
    job_dir = work / "jobs" / "crashed"
    (job_dir / "code").mkdir(parents=True)
    (job_dir / "input").mkdir()
    (job_dir / "code" / "job.json").write_text(json.dumps({"timeout": 600}))
    (job_dir / "code" / "main.py").write_text("import time\ntime.sleep(600)\n")
    for path in (job_dir, job_dir / "code", job_dir / "input"):
        path.chmod(0o755)
    bundle = first._write_bundle(job_dir, "run", cid, None, make_job("", timeout=600), None)
    argv = [*first._runsc_argv(None, "none"), "run", "--detach", "--bundle", str(bundle), cid]
    try:
        # as if the server died mid-job: the sandbox keeps running without its `runsc run` parent
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        assert list((work / "runsc-state").glob(f"{cid}_*"))

        LocalExecutor(work_dir=work)  # the restarted server

        assert not list((work / "runsc-state").glob(f"{cid}_*"))
        assert first.cgroups is not None and first.cgroups.dirs(cid)
        assert not any(path.exists() for path in first.cgroups.dirs(cid))
        assert not job_dir.exists()
    finally:
        first._cleanup(None, cid, None)


def test_a_restart_finishes_teardowns_a_crash_interrupted(executor: LocalExecutor, tmp_path: Path) -> None:
    """Sandbox teardown runs after the result; each sandbox has a journal entry until its removal is done,
    so a server that died in between removes the leftovers (here: cgroups) at its next start."""
    work = tmp_path / "w"
    first = LocalExecutor(work_dir=work)
    cid = f"tako-interrupted-run-{secrets.token_hex(4)}"
    first._create_cgroups(cid, 64 * 1024 * 1024, 10, 0.5)  # what starting a sandbox leaves to remove
    try:
        assert (work / "teardown" / cid).exists()
        assert first.cgroups is not None
        dirs = first.cgroups.dirs(cid)  # one per mounted hierarchy on v1, one on v2
        assert dirs and all(path.is_dir() for path in dirs[: 3 if first.cgroups.version != "v2" else 1])
        made = [path for path in dirs if path.parent.is_dir()]  # (no tako-vm in hybrid's unified)
        for path in made:  # what a `runsc restore` also makes: the cgroup in every other hierarchy
            path.mkdir(exist_ok=True)
        assert len(cgroup_leftovers(first, cid)) == len(made)
        assert len(made) > 3 or first.cgroups.version == "v2"  # v1: more hierarchies than memory/pids/cpu
        assert json.loads((work / "teardown" / cid).read_text()) == [
            str(path) for path in dirs
        ]  # the journal

        LocalExecutor(work_dir=work)  # the restarted server

        assert not any(path.exists() for path in dirs)
        assert not cgroup_leftovers(first, cid)
        assert not (work / "teardown" / cid).exists()
    finally:
        first._cleanup(None, cid, None)


async def test_cold_jobs_leave_no_cgroup_in_any_hierarchy(sx: Sandbox) -> None:
    """``runsc run`` joins the sandbox's cgroup in every mounted hierarchy too: after a cold job's
    teardown none of them is left (v1: memory, pids, cpu and blkio, cpuset, devices, freezer ...)."""
    job_id = f"coldleak-{secrets.token_hex(4)}"
    for n in range(2):
        outcome = await sx.run(f"print({n})", job_id=job_id)
        assert outcome.status == "succeeded", outcome
    await sx.executor.drain()
    assert not cgroup_leftovers(sx.executor, f"tako-{job_id}-*")


def test_a_restart_also_removes_hierarchies_an_older_journal_did_not_name(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """A journal written before every hierarchy was listed names memory/pids/cpu only; the restart still
    removes the sandbox's directories in the other hierarchies (what a restore left there)."""
    work = tmp_path / "w"
    first = LocalExecutor(work_dir=work)
    assert first.cgroups is not None
    if first.cgroups.version == "v2":
        pytest.skip("one hierarchy on v2: nothing an older journal could miss")
    cid = f"tako-oldjournal-snap-{secrets.token_hex(4)}"
    first._create_cgroups(cid, 64 * 1024 * 1024, 10, 0.5)
    dirs = first.cgroups.dirs(cid)
    made = [path for path in dirs[3:] if path.parent.is_dir()]
    try:
        for path in made:
            path.mkdir()
        (work / "teardown" / cid).write_text(json.dumps([str(p) for p in dirs[:3]]))  # the old format
        assert len(cgroup_leftovers(first, cid)) == 3 + len(made) > 3

        LocalExecutor(work_dir=work)  # the restarted server

        assert not cgroup_leftovers(first, cid)
        assert not (work / "teardown" / cid).exists()
    finally:
        first._cleanup(None, cid, None)
