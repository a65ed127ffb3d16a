"""`tako-vm` as a user runs it (a subprocess), against a server started with `tako-vm server`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_server import SANDBOX_TESTS, strict_server

from tako_vm.testing import LocalServer

pytestmark = SANDBOX_TESTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(tmp_path_factory, "cli-server", via_cli=True) as running:
        yield running


def tako(server: LocalServer, *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tako_vm.cli", *argv, "--url", server.url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _script(tmp_path: Path, code: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(code)
    return str(path)


def test_server_started_by_the_cli_reports_itself(server: LocalServer) -> None:
    assert "backend=local listening on" in server.log()
    health = tako(server, "status")
    assert health.returncode == 0 and "healthy" in health.stdout and "runsc" in health.stdout


def test_run_prints_stdout_and_exits_zero(server: LocalServer, tmp_path: Path) -> None:
    file = _script(tmp_path, "import json\nn = json.load(open('/input/data.json'))['n']\nprint(n * 2)\n")
    done = tako(server, "run", file, "--input", '{"n": 21}', "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    assert "submitted job.py as job" in done.stderr and " succeeded in " in done.stderr
    as_json = tako(server, "run", file, "--input", '{"n": 5}', "--json", "-q")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]  # one JSON line per event
    assert as_json.returncode == 0 and events[-1]["event"] == "result"
    assert events[-1]["data"]["stdout"] == "10\n"
    assert "".join(e["data"]["text"] for e in events if e["event"] == "stdout") == "10\n"


def test_run_exits_with_the_job_exit_code_and_shows_its_stderr(server: LocalServer, tmp_path: Path) -> None:
    done = tako(server, "run", _script(tmp_path, "import sys\nprint('partial')\nsys.exit(3)\n"))
    assert done.returncode == 3 and done.stdout == "partial\n"
    crashed = tako(server, "run", _script(tmp_path, "print(1 / 0)\n", "crash.py"))
    assert crashed.returncode == 1
    assert "ZeroDivisionError: division by zero" in crashed.stderr
    assert " failed in " in crashed.stderr  # the summary line names the status and the error type


def test_run_shows_progress_and_maps_a_timeout_to_124(server: LocalServer, tmp_path: Path) -> None:
    done = tako(server, "run", _script(tmp_path, "import time\ntime.sleep(30)\n"), "--timeout", "2")
    assert done.returncode == 124, done.stderr
    assert "running after" in done.stderr and " timeout in " in done.stderr


def test_status_and_executions_table(server: LocalServer, tmp_path: Path) -> None:
    done = tako(server, "run", _script(tmp_path, "print('listed')\n"))
    job_id = done.stderr.split("as job ", 1)[1].split()[0]
    status = tako(server, "status", job_id)
    shown = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert status.returncode == 0 and shown["job"].strip() == job_id
    assert shown["status"].strip() == "succeeded"
    table = tako(server, "executions", "--limit", "50")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["EXECUTION", "ID", "STATUS"]
    assert any(row.split()[:2] == [job_id, "succeeded"] for row in rows)
    missing = tako(server, "status", "no-such-job")
    assert missing.returncode == 3 and "no job id starts with 'no-such-job'" in missing.stderr
    unknown = tako(server, "status", "0" * 8 + "-0000-4000-8000-" + "0" * 12)
    assert unknown.returncode == 3 and "404" in unknown.stderr


def test_run_prints_output_live_like_docker_run(server: LocalServer, tmp_path: Path) -> None:
    """Issue #13: `tako-vm run` prints each line as the script writes it, not all at the end."""
    import time

    script = _script(
        tmp_path, "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(1)\n"
    )
    command = [sys.executable, "-m", "tako_vm.cli", "run", script, "--url", server.url]
    seen: list[tuple[str, float]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append((line.rstrip("\n"), time.monotonic()))
        assert proc.wait(timeout=120) == 0
    assert [text for text, _ in seen] == ["line 0", "line 1", "line 2", "line 3"]
    assert seen[-1][1] - seen[0][1] >= 2.0, f"the lines arrived together: {seen}"
