"""Issue #18 as a user meets it: `tako-vm` run as a subprocess against a real server (runsc sandboxes),
and `tako-vm server` started the way a user starts it (typos in the environment, non-root, logs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_server import RUNSC_PATH, needs_runsc, strict_server

from tako_vm.testing import LocalServer, free_port

pytestmark = [pytest.mark.sandbox]


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TAKO_VM_")}
    return {**env, "PATH": RUNSC_PATH, **extra}


def cli(*argv: str, url: str | None = None, stdin: str | None = None, cwd: Path | None = None, **env: str):
    command = [sys.executable, "-m", "tako_vm.cli", *argv, *(["--url", url] if url else [])]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=180, input=stdin, cwd=cwd, env=clean_env(**env)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if shutil.which("runsc", path=RUNSC_PATH) is None:
        pytest.skip("runsc not installed (scripts/install-system.sh puts it in .tools/bin)")
    with strict_server(tmp_path_factory, "first-hour", warm_pool_size=1) as running:
        yield running


def submitted_id(stderr: str) -> str:
    return stderr.split("as job ", 1)[1].split()[0]


ARTIFACT_CODE = """
import json
open('/output/result.json', 'w').write(json.dumps({'answer': 42}))
open('/output/plot.txt', 'w').write('a plot')
print('done')
"""


def test_run_says_what_the_job_wrote_and_saves_it_with_o(server: LocalServer, tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(ARTIFACT_CODE)
    done = cli("run", str(script), "-o", str(tmp_path / "out"), url=server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert (
        f"wrote output and 1 artifact (saved in {tmp_path / 'out'})" in done.stderr
    )  # result.json is the output
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {"answer": 42}
    assert (tmp_path / "out" / "plot.txt").read_text() == "a plot"
    # without -o it says where to get them
    plain = cli("run", str(script), url=server.url)
    job_id = submitted_id(plain.stderr)
    assert f"wrote output and 1 artifact (tako-vm result/artifacts {job_id[:12]})" in plain.stderr


def test_past_job_commands_accept_unique_id_prefixes(server: LocalServer, tmp_path: Path) -> None:
    script = tmp_path / "report.py"
    script.write_text(ARTIFACT_CODE + "import sys\nprint('to stderr', file=sys.stderr)\n")
    job_id = submitted_id(cli("run", str(script), url=server.url).stderr)
    prefix = job_id[:8]
    logs = cli("logs", prefix, url=server.url)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "done\n", "to stderr\n")
    result = cli("result", prefix, url=server.url)
    assert result.returncode == 0 and json.loads(result.stdout) == {"answer": 42}
    listed = cli("artifacts", prefix, url=server.url)
    assert listed.returncode == 0 and listed.stdout.split() == ["6", "plot.txt", "14", "result.json"]
    saved = cli("artifacts", prefix, "-o", str(tmp_path / "a"), url=server.url)
    assert saved.returncode == 0 and (tmp_path / "a" / "plot.txt").read_text() == "a plot"
    rerun = cli("rerun", prefix, url=server.url)
    assert rerun.returncode == 0
    again = cli("logs", rerun.stdout.strip(), url=server.url)
    assert again.stdout == "done\n"
    forked = cli("fork", prefix, "-c", "print('forked')", url=server.url)
    assert forked.returncode == 0
    deadline = time.monotonic() + 60
    while (out := cli("logs", forked.stdout.strip(), url=server.url)).stdout != "forked\n":
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    status = cli("status", prefix, url=server.url)
    assert status.returncode == 0 and job_id in status.stdout
    none = cli("logs", "zzzz", url=server.url)
    assert none.returncode == 3 and "no job id starts with 'zzzz'" in none.stderr


def test_detach_stdin_code_string_quiet_and_cancel(server: LocalServer, tmp_path: Path) -> None:
    detached = cli("run", "-d", "-c", "import time\ntime.sleep(60)", url=server.url)
    assert detached.returncode == 0 and detached.stderr == ""
    job_id = detached.stdout.strip()
    assert len(job_id) == 36
    cancelled = cli("cancel", job_id[:10], url=server.url)
    assert cancelled.returncode == 0 and f"cancelled job {job_id}" in cancelled.stderr
    piped = cli("run", "-", "-q", stdin="print(6 * 7)\n", url=server.url)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "42\n", "")
    both = cli("run", str(tmp_path / "x.py"), "-c", "print(1)", url=server.url)
    assert both.returncode == 2 and "not both" in both.stderr


def test_tracebacks_name_the_users_file(server: LocalServer, tmp_path: Path) -> None:
    script = tmp_path / "my_script.py"
    script.write_text("def f(x):\n    return 1 / x\n\nf(0)\n")
    done = cli("run", str(script), url=server.url)
    assert done.returncode == 1
    assert f'File "{script}", line 4, in <module>' in done.stderr
    assert "/code/main.py" not in done.stderr
    inline = cli("run", "-c", "1/0", url=server.url)
    assert 'File "<string>", line 1' in inline.stderr


def test_status_is_readable_and_names_the_runtime(server: LocalServer) -> None:
    done = cli("status", url=server.url)
    assert done.returncode == 0, done.stderr
    shown = {
        key.strip(): value.strip() for key, value in (line.split(":", 1) for line in done.stdout.splitlines())
    }
    health = json.loads(cli("status", "--json", url=server.url).stdout)
    assert health["runsc_version"] and health["platform"] in {"systrap", "ptrace"}
    assert shown["sandbox"] == f"runsc {health['runsc_version']} (platform {health['platform']})"
    assert shown["cgroups"] == health["cgroup"] and health["cgroup"] in {"v1", "v2", "hybrid"}
    assert shown["data dir"] == str(server.data_dir / "state")
    assert shown["warm pool"].endswith("/1 ready") and shown["auth"] == "off"
    assert "pending" in shown["queue"] and "docker" not in done.stdout and "{" not in done.stdout


def test_executions_usage_errors_and_consistent_exit_codes(server: LocalServer, tmp_path: Path) -> None:
    timeout = cli("run", "-q", "-c", "import time\ntime.sleep(30)", "--timeout", "1", url=server.url)
    assert timeout.returncode == 124
    table = cli("executions", "--status", "timeout", url=server.url)
    header, *rows = table.stdout.splitlines()
    exit_column = header.index("EXIT")
    assert rows and all(row[exit_column:].split()[0] == "124" for row in rows)
    for argv, needle in (
        (("--status", "bogus"), "argument --status: invalid choice: 'bogus'"),
        (("--limit", "0"), "argument --limit: must be from 1 to 1000, got 0"),
    ):
        bad = cli("executions", *argv, url=server.url)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and needle in bad.stderr, bad.stderr
    refused = cli("run", "-c", "print(1)", "--timeout", "100000", url=server.url)
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("tako-vm: the server refused the request: timeout:")


def test_unreachable_server_version_and_completion() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = cli("status", url=url)
    assert down.returncode == 3
    assert f"cannot reach the Tako VM server at {url}" in down.stderr and "tako-vm server" in down.stderr
    via_env = cli("executions", TAKO_VM_URL=url)
    assert via_env.returncode == 3 and url in via_env.stderr
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("tako-vm ")
    script = cli("completion", "bash")
    assert script.returncode == 0 and "complete" in script.stdout and "tako-vm" in script.stdout
    # the completion itself: what bash asks argcomplete for `tako-vm ar<TAB>`
    line = "tako-vm ar"
    answer = subprocess.run(
        [sys.executable, "-m", "tako_vm.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(
            _ARGCOMPLETE="1",
            COMP_LINE=line,
            COMP_POINT=str(len(line)),
            _ARGCOMPLETE_STDOUT_FILENAME="/dev/stdout",
        ),
    )
    assert "artifacts" in answer.stdout


def start_server(
    args: list[str], env: dict[str, str], cwd: Path, user: list[str] | None = None
) -> subprocess.Popen[str]:
    command = [*(user or []), sys.executable, "-m", "tako_vm.cli", "server", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def test_a_misspelled_variable_or_runsc_path_stops_the_server_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("{}\n")
    typo = cli("server", "-c", str(tmp_path / "c.yaml"), "--port", "0", TAKO_VM_MAX_WORKRS="3", cwd=tmp_path)
    assert typo.returncode == 2 and "TAKO_VM_MAX_WORKRS (did you mean TAKO_VM_MAX_WORKERS?)" in typo.stderr
    runsc = cli(
        "server", "-c", str(tmp_path / "c.yaml"), "--port", "0", TAKO_VM_RUNSC="/nonexistent", cwd=tmp_path
    )
    assert runsc.returncode == 2 and "TAKO_VM_RUNSC=/nonexistent: does not exist" in runsc.stderr


@needs_runsc
def test_server_lifecycle_lines_and_json_log_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(json.dumps({"warm_pool_size": 0, "data_dir": str(tmp_path / "d")}))
    port = free_port()
    log_file = tmp_path / "server.jsonl"
    process = start_server(
        [
            "-c",
            str(tmp_path / "c.yaml"),
            "--port",
            str(port),
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
        ],
        clean_env(),
        tmp_path,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}" in first
        # "listening" means ready: the very next request is answered
        health = cli("status", "--json", url=f"http://127.0.0.1:{port}")
        assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[1]
    assert process.returncode == 0
    assert f"stopped (was listening on http://127.0.0.1:{port})" in rest
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("listening on" in entry["message"] for entry in entries)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_non_root_strict_says_root_is_needed_and_permissive_starts_twice() -> None:
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="tako-nonroot-"))  # pytest's tmp_path is root-only (0700)
    tmp_path.chmod(0o777)
    (tmp_path / "strict.yaml").write_text("{}\n")
    (tmp_path / "permissive.yaml").write_text(
        json.dumps({"security_mode": "permissive", "warm_pool_size": 0})
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = clean_env(HOME=str(tmp_path))
    strict = start_server(
        ["-c", str(tmp_path / "strict.yaml"), "--port", "0", "--data-dir", str(tmp_path / "s")],
        env,
        tmp_path,
        nobody,
    )
    err = strict.communicate(timeout=120)[1]
    assert strict.returncode == 3
    assert "runsc is installed, but the server runs as a non-root user" in err and "needs root" in err
    for _ in range(2):  # the second start reuses the data dir the first one left
        port = free_port()
        process = start_server(
            ["-c", str(tmp_path / "permissive.yaml"), "--port", str(port), "--data-dir", str(tmp_path / "p")],
            env,
            tmp_path,
            nobody,
        )
        assert process.stderr is not None
        lines = []
        while "listening on" not in (line := process.stderr.readline()):
            assert line, "".join(lines)  # exited before listening
            lines.append(line)
        health = json.loads(cli("status", "--json", url=f"http://127.0.0.1:{port}").stdout)
        assert health["warnings"] and "WITHOUT a sandbox" in health["warnings"][0]
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        assert process.returncode == 0
    shutil.rmtree(tmp_path, ignore_errors=True)
