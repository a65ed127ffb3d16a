"""The runner's standby mode (runner/tako_runner/standby.py) as a real process on a loopback address:
one authenticated push, then the job runs like `runner.py run` and prints the same envelope."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tako_runner import standby
from tako_runner.outcome import parse_envelope

STANDBY = Path(standby.__file__)
TOKEN = "s3cret-token-0123456789abcdef"
pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Standby:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.dirs = {name: root / name for name in ("code", "input", "output", "tmp")}
        for path in self.dirs.values():
            path.mkdir()
        argv = [sys.executable, "-I", str(STANDBY), "--host", "127.0.0.1", "--port", str(self.port)]
        for name, path in self.dirs.items():
            argv += [f"--{'work' if name == 'tmp' else name}-dir", str(path)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin"), standby.TOKEN_ENV: TOKEN}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, self.proc.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.02)
        raise AssertionError("standby runner did not listen")

    def push(self, body: Any, token: str = TOKEN, path: str = "/job") -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out.decode(), err.decode()


@pytest.fixture
def waiting(tmp_path: Path) -> Iterator[Standby]:
    runner = Standby(tmp_path)
    yield runner
    if runner.proc.poll() is None:
        runner.proc.kill()
        runner.proc.wait()


def job_body(code: str = "print('hi')", **config: Any) -> dict[str, Any]:
    return {"job_uid": "uid-1", "code": code, "input_data": {"n": 2}, "config": {"timeout": 5, **config}}


def test_one_push_runs_the_job_and_prints_the_envelope(waiting: Standby) -> None:
    code = f"import json; print(json.load(open({str(waiting.dirs['input'] / 'data.json')!r}))['n'] * 21)"
    status, answer = waiting.push(job_body(code))
    assert (status, answer) == (200, {"accepted": True, "job_uid": "uid-1"})
    rc, out, _err = waiting.finish()
    assert rc == 0
    envelope = parse_envelope(out)
    assert envelope is not None and envelope["exit_code"] == 0 and envelope["stdout"] == "42\n"
    assert out.lstrip().startswith("TAKO-ENVELOPE-V1")  # nothing else on stdout
    main = waiting.dirs["code"] / "main.py"
    assert main.read_text() == code and main.stat().st_mode & 0o777 == 0o444
    assert waiting.dirs["code"].stat().st_mode & 0o777 == 0o555


def test_wrong_token_is_refused_and_a_second_push_finds_nothing_listening(waiting: Standby) -> None:
    assert waiting.push(job_body(), token="wrong-token-wrong-token")[0] == 401
    assert waiting.push(job_body(), token="")[0] == 401
    assert not (waiting.dirs["code"] / "main.py").exists()
    assert waiting.push(job_body("print('first')"))[0] == 200
    # refused or reset (it may reach the backlog before the listener closes): never answered
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        waiting.push(job_body("print('second')"))
    _rc, out, _err = waiting.finish()
    envelope = parse_envelope(out)
    assert envelope is not None and envelope["stdout"] == "first\n"


def test_the_push_cannot_choose_paths(waiting: Standby, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.py"
    body = job_body(
        "print('ok')", code_path=str(elsewhere), output_dir="/", work_dir="/", python="/bin/false"
    )
    assert waiting.push(body)[0] == 200
    _rc, out, _err = waiting.finish()
    envelope = parse_envelope(out)
    assert envelope is not None and envelope["stdout"] == "ok\n"
    assert not elsewhere.exists()
    config = json.loads((waiting.dirs["code"] / "job.json").read_text())
    assert config["code_path"] == str(waiting.dirs["code"] / "main.py")
    assert config["output_dir"] == str(waiting.dirs["output"]) and "python" not in config


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"job_uid": "u", "code": "   ", "config": {}}, "code"),
        ({"job_uid": "u", "code": "x", "config": []}, "config"),
        ({"job_uid": "u", "code": "x", "config": {}, "extra": 1}, "unknown fields: extra"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_pushes_are_refused_naming_the_field(waiting: Standby, body: Any, words: str) -> None:
    status, answer = waiting.push(body)
    assert status == 400 and words in answer["detail"]
    assert waiting.push(job_body(), path="/other")[0] == 404
    assert waiting.proc.poll() is None  # still waiting for a good push


def test_the_job_limits_apply(waiting: Standby) -> None:
    assert waiting.push(job_body("import time; time.sleep(30)", timeout=1, kill_grace_seconds=0.2))[0] == 200
    _rc, out, _err = waiting.finish()
    envelope = parse_envelope(out)
    assert envelope is not None and envelope["error"]["type"] == "execution_timeout"


def test_too_many_wrong_tokens_end_the_runner(waiting: Standby) -> None:
    for _ in range(standby.MAX_BAD_PUSHES):
        assert waiting.push(job_body(), token="x" * 20)[0] == 401
    rc, out, err = waiting.finish()
    assert rc == standby.EXIT_TOO_MANY_BAD_PUSHES and out == "" and "wrong token" in err


def test_missing_token_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-I", str(STANDBY), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin"},
        timeout=20,
    )
    assert result.returncode == 2 and standby.TOKEN_ENV in result.stderr


def test_the_token_leaves_the_runners_environment_before_it_listens(waiting: Standby) -> None:
    environ = Path(f"/proc/{waiting.proc.pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{waiting.proc.pid}/cmdline").read_bytes()
    assert TOKEN.encode() not in environ and standby.TOKEN_ENV.encode() not in environ
    assert TOKEN.encode() not in cmdline and b"--token-fd" in cmdline  # re-executed, token on a pipe
