"""runner.py run directly with the host Python (paths redirected into tmp dirs; kill_all_processes off):
phases, capture caps, deadlines, result/artifact collection, egress probe, requirement checks."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tako_runner import runner
from tako_runner.outcome import parse_envelope

RUNNER = runner.__file__


@pytest.fixture
def box(tmp_path: Path) -> Path:
    for name in ("code", "input", "output", "tmp", "deps"):
        (tmp_path / name).mkdir()
    (tmp_path / "input" / "data.json").write_text('{"n": 4}')
    return tmp_path


def run_runner(box: Path, code: str, mode: str = "run", **config: Any) -> tuple[dict[str, Any], str, str]:
    (box / "code" / "main.py").write_text(code)
    cfg = {
        "code_path": str(box / "code" / "main.py"),
        "input_path": str(box / "input" / "data.json"),
        "output_dir": str(box / "output"),
        "work_dir": str(box / "tmp"),
        "deps_dir": str(box / "deps"),
        "kill_all_processes": False,
        "kill_grace_seconds": 0.5,
        "timeout": 10,
        **config,
    }
    (box / "job.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, "-I", RUNNER, mode, "--config", str(box / "job.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    envelope = parse_envelope(proc.stdout)
    assert envelope is not None, proc.stdout
    return envelope, proc.stdout, proc.stderr


def test_run_captures_streams_separately_and_prints_only_the_frame(box: Path) -> None:
    data = box / "input" / "data.json"
    code = "import sys, json\nprint('out')\nprint('err', file=sys.stderr)\n"
    code += f"print(json.load(open('{data}'))['n'])\n"
    envelope, stdout, stderr = run_runner(box, code)
    assert envelope["stdout"] == "out\n4\n" and envelope["stderr"] == "err\n"
    assert envelope["exit_code"] == 0 and envelope["error"] is None
    assert stdout.startswith("\nTAKO-ENVELOPE-V1 ") and stdout.endswith("TAKO-ENVELOPE-END\n")
    assert stdout.count("TAKO-ENVELOPE-V1") == 1
    assert stderr == ""
    assert set(envelope["timing"]) == {"startup_ms", "execution_ms", "total_ms"}
    assert envelope["resource_usage"]["wall_time_ms"] == envelope["timing"]["execution_ms"]


def test_result_json_and_artifacts(box: Path) -> None:
    out = box / "output"
    code = (
        f"import json, os\njson.dump({{'k': 1}}, open('{out}/result.json', 'w'))\n"
        f"open('{out}/data.bin', 'wb').write(b'\\x00' * 10)\n"
        f"open('{out}/.hidden', 'w').write('h')\n"
        f"os.symlink('/etc/passwd', '{out}/link')\n"
        f"os.mkdir('{out}/sub')\n"
    )
    envelope, _, _ = run_runner(box, code)
    assert envelope["output"] == {"k": 1}
    names = [a["name"] for a in envelope["artifacts"]]
    assert names == ["data.bin", "result.json"]
    data = envelope["artifacts"][0]
    assert data == {  # name, size and sha256 only: the bytes stay in the file (the host copies it)
        "name": "data.bin",
        "size_bytes": 10,
        "sha256": hashlib.sha256(b"\x00" * 10).hexdigest(),
        "content_type": "application/octet-stream",
    }


@pytest.mark.parametrize(
    ("content", "problem"), [("[1]", "must hold a JSON object"), ("{bad", "not valid JSON")]
)
def test_result_json_must_be_an_object(box: Path, content: str, problem: str) -> None:
    envelope, _, _ = run_runner(box, f"open('{box}/output/result.json', 'w').write({content!r})")
    assert envelope["output"] is None
    assert problem in envelope["output_error"]
    assert envelope["error"] is None  # not output, but not the job's failure either (0.3.0 contract)


def test_artifact_caps(box: Path) -> None:
    out = box / "output"
    code = "".join(f"open('{out}/f{i}', 'w').write('x' * 400)\n" for i in range(4))
    code += f"open('{out}/huge', 'w').write('x' * 2000)\n"
    envelope, _, _ = run_runner(box, code, max_artifact_bytes=1000, max_total_artifact_bytes=1000)
    assert [a["name"] for a in envelope["artifacts"]] == ["f0", "f1"]
    reasons = {s["name"]: s["reason"] for s in envelope["artifacts_skipped"]}
    assert reasons["huge"] == "larger than 1000 bytes"
    assert reasons["f2"] == reasons["f3"] == "total over 1000 bytes"


@pytest.mark.parametrize("written", [1200, 10])
def test_a_code_that_dies_of_a_full_output_gets_an_error_naming_the_total_cap(
    box: Path, written: int
) -> None:
    """The local /output is a filesystem of the total cap: past it the code gets ENOSPC (issue #19, 8)."""
    code = (
        f"open('{box}/output/big', 'w').write('x' * {written})\nraise OSError(28, 'No space left on device')"
    )
    envelope, _, _ = run_runner(box, code, max_total_artifact_bytes=1000)
    assert envelope["exit_code"] == 1
    if written >= 1000:  # /output really is full: the limit is named
        assert envelope["error"]["type"] == "invalid_output"
        assert "max_total_artifact_bytes=1000" in envelope["error"]["message"]
        assert "No space left on device" in envelope["error"]["message"]
    else:  # ENOSPC from somewhere else (/tmp): the code's own error, classified from its traceback
        assert envelope["error"] is None


def test_deadline_terms_then_kills_and_reports_execution_timeout(box: Path) -> None:
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    started = time.monotonic()
    envelope, _, _ = run_runner(box, code, timeout=1, kill_grace_seconds=0.5)
    assert time.monotonic() - started < 10  # 1 s timeout + 0.5 s grace; generous for a loaded machine
    assert envelope["error"]["type"] == "execution_timeout" and envelope["error"]["phase"] == "execution"
    assert envelope["exit_code"] == 137  # SIGKILL after SIGTERM was ignored
    assert envelope["stdout"] == "started\n"


def test_background_children_holding_the_pipes_do_not_hang_the_runner(box: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nprint('parent done')\n"
    )
    started = time.monotonic()
    envelope, _, _ = run_runner(box, code)
    assert time.monotonic() - started < 10  # the sleeping child (60 s) must not hold the runner
    assert envelope["exit_code"] == 0 and envelope["stdout"] == "parent done\n"


def test_signal_exit_code_is_128_plus_signal(box: Path) -> None:
    envelope, _, _ = run_runner(box, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert envelope["exit_code"] == 139


def test_environment_and_deps_on_pythonpath(box: Path) -> None:
    (box / "deps" / "fancylib.py").write_text("VALUE = 'from deps'\n")
    code = "import os, fancylib\nprint(fancylib.VALUE, os.environ['EXTRA'], os.environ['HOME'])\n"
    envelope, _, _ = run_runner(box, code, environment={"EXTRA": "yes"})
    assert envelope["stdout"] == f"from deps yes {box / 'tmp'}\n"


def test_host_environment_is_not_passed_to_user_code(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2")
    envelope, _, _ = run_runner(box, "import os\nprint(sorted(os.environ))\n")
    assert "RUNNER_TEST_SECRET" not in envelope["stdout"]


def test_install_without_requirements_is_a_no_op(box: Path) -> None:
    envelope, _, _ = run_runner(box, "", mode="install")
    assert envelope["mode"] == "install" and envelope["error"] is None and envelope["exit_code"] == 0


def test_install_rejects_bad_requirements_before_pip(box: Path) -> None:
    envelope, _, _ = run_runner(box, "", mode="install", requirements=["six", "--index-url=http://evil"])
    assert envelope["error"]["type"] == "dependency_error"
    assert "requirements[1]" in envelope["error"]["message"]
    assert "exit_code" not in envelope  # pip never ran


def test_broken_config_still_ends_in_one_envelope(box: Path) -> None:
    (box / "job.json").write_text("[1, 2]")
    proc = subprocess.run(
        [sys.executable, "-I", RUNNER, "run", "--config", str(box / "job.json")],
        capture_output=True,
        text=True,
    )
    envelope = parse_envelope(proc.stdout)
    assert envelope is not None and envelope["error"]["type"] == "internal_error"


@pytest.fixture
def listening_port() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_egress_probe_fails_closed_when_egress_is_open(box: Path, listening_port: int) -> None:
    started = time.monotonic()
    envelope, _, _ = run_runner(
        box,
        "print('must not run')",
        egress_probe=True,
        egress_probe_timeout=1,
        egress_probe_targets=[["127.0.0.1", listening_port]],
        egress_probe_hostname=None,
    )
    assert envelope["error"]["type"] == "egress_not_closed"
    assert f"tcp 127.0.0.1:{listening_port}" in envelope["error"]["message"]
    assert envelope["stdout"] == "" and envelope["exit_code"] is None
    assert 1 <= time.monotonic() - started < 8


def test_egress_probe_passes_when_closed(box: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    envelope, _, _ = run_runner(
        box,
        "print('ran')",
        egress_probe=True,
        egress_probe_targets=[["127.0.0.1", port]],
        egress_probe_hostname=None,
    )
    assert envelope["error"] is None and envelope["stdout"] == "ran\n"


# ------------------------------------------------------------------ pure pieces


def test_capture_truncates_on_a_utf8_boundary_with_a_notice() -> None:
    split = runner.Capture(9)
    split.feed("ééééééé".encode())  # the 9th byte starts a character: it is dropped
    assert split.text() == "éééé\n\n[TRUNCATED: output exceeded 9 bytes]"
    capture = runner.Capture(10)
    capture.feed("ééééééé".encode())  # 14 bytes
    assert capture.truncated
    assert capture.text() == "ééééé\n\n[TRUNCATED: output exceeded 10 bytes]"


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), limit=st.integers(0, 200), chunk=st.integers(1, 50))
def test_capture_properties(data: bytes, limit: int, chunk: int) -> None:
    capture = runner.Capture(limit)
    for i in range(0, len(data), chunk):
        capture.feed(data[i : i + chunk])
    assert capture.total == len(data)
    assert capture.truncated == (len(data) > limit)
    body = capture.text().split("\n\n[TRUNCATED")[0] if capture.truncated else capture.text()
    if not capture.truncated:
        assert body == data.decode("utf-8", errors="replace")
    else:
        assert len(bytes(capture.data)) <= limit


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=120), limit=st.integers(0, 200))
def test_capture_never_splits_a_character_of_valid_utf8(text: str, limit: int) -> None:
    capture = runner.Capture(limit)
    capture.feed(text.encode())
    body = capture.text().split("\n\n[TRUNCATED")[0]
    assert "\ufffd" not in body
    assert text.startswith(body)


@pytest.mark.parametrize(
    "good", ["six", "idna==3.7", "requests[socks,security]>=2,<3", "a.b_c-d~=1.0", "x===1.0"]
)
def test_check_requirements_accepts_plain_specs(good: str) -> None:
    assert runner.check_requirements([good]) == [good]


def test_check_requirements_limits() -> None:
    with pytest.raises(ValueError, match="too many requirements: 51 > 50"):
        runner.check_requirements(["six"] * 51)
    with pytest.raises(ValueError, match=r"requirements\[0\] is longer than 256"):
        runner.check_requirements(["a" * 257])
    with pytest.raises(ValueError, match=r"requirements\[0\] must be a string"):
        runner.check_requirements([3])
    with pytest.raises(ValueError, match="must be a list"):
        runner.check_requirements("six")


def test_runner_is_stdlib_only() -> None:
    """The file is shipped alone: every import must come from the standard library."""
    import ast

    tree = ast.parse(Path(RUNNER).read_text())
    modules = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules - set(sys.stdlib_module_names)
    assert os.path.basename(RUNNER) == "runner.py"


@given(key=st.binary(max_size=100), message=st.binary(max_size=300))
@settings(max_examples=50, deadline=None)
def test_hmac_sha256_matches_the_standard_library(key: bytes, message: bytes) -> None:
    import hashlib
    import hmac

    assert runner.hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert runner.sha256(message).hexdigest() == hashlib.sha256(message).hexdigest()


def test_frame_key_from_stdin_is_consumed_and_authenticates_the_frame(box: Path) -> None:
    """``--frame-key-stdin``: the frame is followed by an HMAC line keyed with the stdin key, and user
    code finds /dev/null on the stdin it inherits (never the key)."""
    import hashlib
    import hmac

    (box / "code" / "main.py").write_text("import sys\nprint(repr(sys.stdin.read()))\n")
    cfg = {
        "code_path": str(box / "code" / "main.py"),
        "output_dir": str(box / "output"),
        "work_dir": str(box / "tmp"),
        "kill_all_processes": False,
    }
    (box / "job.json").write_text(json.dumps(cfg))
    key = b"k" * 64
    proc = subprocess.run(
        [sys.executable, "-I", RUNNER, "run", "--config", str(box / "job.json"), "--frame-key-stdin"],
        input=key + b"\nmore bytes the runner must not pass on\n",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    framed, _, mac = proc.stdout.rpartition(b"TAKO-ENVELOPE-MAC ")
    length, digest = mac.split()
    assert int(length) == len(framed)
    assert digest.decode() == hmac.new(key, framed, hashlib.sha256).hexdigest()
    envelope = parse_envelope(framed.decode())
    assert envelope is not None and envelope["stdout"] == "''\n"
    assert runner.parse_args(["run", "--frame-key-stdin"]) == ("run", "/code/job.json", True)


def test_a_namespace_with_only_loopback_skips_the_probe(tmp_path: Path) -> None:
    header = "Inter-|   Receive\n face |bytes    packets\n"
    only_lo = tmp_path / "lo"
    only_lo.write_text(header + "    lo:       0       0    0    0\n")
    with_eth = tmp_path / "eth"
    with_eth.write_text(header + "    lo: 0 0\n  eth0: 10 2\n")
    assert runner.interface_names(with_eth.read_text()) == ["lo", "eth0"]
    assert runner.only_loopback(str(only_lo)) is True
    assert runner.only_loopback(str(with_eth)) is False
    assert runner.only_loopback(str(tmp_path / "missing")) is False  # unreadable: probe for real
    assert runner.only_loopback(str(tmp_path)) is False


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"a":' * 300 + "1" + "}" * 300, "max_output_depth=64"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "max_output_depth=64"),  # deeper than json's recursion
        ('{"big": 1e400}', "finite"),
        ('{"x": NaN}', "finite"),
        ('{"x": [-Infinity]}', "finite"),
    ],
)
def test_a_bad_result_json_is_the_users_error_and_keeps_stdout(box: Path, content: str, problem: str) -> None:
    """Issue #19 finding 6: a 300-deep result broke history (500s), ``1e400`` crashed the runner
    (``allow_nan=False``) and lost stdout. Now: ``invalid_output`` naming the limit, stdout kept."""
    code = f"print('kept')\nopen('{box}/output/result.json', 'w').write({content!r})"
    envelope, _, _ = run_runner(box, code)
    assert envelope["output"] is None and envelope["stdout"] == "kept\n"
    assert envelope["error"]["type"] == "invalid_output" and problem in envelope["error"]["message"]


def test_a_deep_but_allowed_result_is_kept(box: Path) -> None:
    content = '{"a":' * 63 + "1" + "}" * 63
    envelope, _, _ = run_runner(box, f"open('{box}/output/result.json', 'w').write({content!r})")
    assert envelope["error"] is None and envelope["output"] is not None


def test_the_artifact_count_is_capped_and_named(box: Path) -> None:
    """Issue #19 finding 1: 100,000 files in /output became 100,000 artifacts (a 16 MB record)."""
    code = f"for i in range(1500):\n    open(f'{box}/output/f{{i:05d}}', 'w').close()\nprint('done')"
    envelope, _, _ = run_runner(box, code, max_artifact_count=1000)
    assert len(envelope["artifacts"]) == 1000 and envelope["stdout"] == "done\n"
    assert envelope["error"]["type"] == "invalid_output"
    assert (
        "1500 files" in envelope["error"]["message"]
        and "max_artifact_count=1000" in envelope["error"]["message"]
    )
    assert len(envelope.get("artifacts_skipped", [])) <= 100  # no second unbounded list


def test_output_problem_is_iterative_and_strict() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    assert "max_output_depth=64" in (runner.output_problem({"a": deep}, 64) or "")
    assert runner.output_problem({"a": [1, 2.5, "x", None, True, {"b": {}}]}, 64) is None
    assert "non-finite" in (runner.output_problem({"a": float("nan")}, 64) or "")
