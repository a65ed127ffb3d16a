"""The standby runner inside a real gVisor sandbox (runsc), as a non-root user: it takes one push over
the network, runs the job, and the user code can read neither the token from its environment nor the
runner's /proc/1/environ. (gVisor shows a same-uid process's initial environment even when it is
non-dumpable; this test found that, so the runner now re-executes itself with the token on a pipe.)

The sandbox is the local backend's own OCI spec (same rootfs, /etc, limits and non-root uid) with two
changes a standby Pod has too: the runner starts `standby.py` and /code, /input are writable by the
runner. It uses runsc's host network (`--network=host`) so the test can reach the listener on
127.0.0.1; a Pod has its own network namespace instead, which this machine cannot give a sandbox.
Skipped, with the reason, when runsc cannot start a sandbox here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tako_runner import runner as runner_module
from tako_runner import standby as standby_runner
from tako_runner.outcome import parse_envelope
from tako_shim.backends.local.sandbox import oci as sandbox
from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxUnavailable

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(120)]
TOKEN = "gvisor-standby-" + "t" * 30


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExecutor]:
    os.environ["PATH"] = f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"
    work = tmp_path_factory.mktemp("standby-gvisor")
    try:
        yield LocalExecutor(work_dir=work, security_mode="strict")
    except SandboxUnavailable as exc:
        pytest.skip(f"runsc cannot start a sandbox here: {exc}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bundle(executor: LocalExecutor, root: Path, port: int) -> Path:
    runner_dir = root / "runner"
    runner_dir.mkdir()
    for module in (runner_module, standby_runner):
        shutil.copyfile(str(module.__file__), runner_dir / Path(str(module.__file__)).name)
    for name in ("code", "input"):
        (root / name).mkdir()
        (root / name).chmod(0o777)  # the runner (non-root) writes the pushed job here
    spec = sandbox.SandboxSpec(
        mode="run",
        rootfs=str(executor.work_dir / "rootfs"),
        etc_dir=str(executor.work_dir / "etc-run"),
        runner_dir=str(runner_dir),
        code_dir=str(root / "code"),
        input_dir=str(root / "input"),
        deps_dir=None,
        # the executor's cgroup parent (v1: /tako-vm, v2: the server's delegated cgroup); runsc creates and
        # removes this one itself
        cgroup_path=executor.cgroups.oci_path(f"standby-{root.name}")
        if executor.cgroups
        else "/tako-vm-standby",
        memory_limit_bytes=256 * sandbox.MIB,
        pids_limit=64,
        cpu_limit=1.0,
        tmp_size_bytes=64 * sandbox.MIB,
        output_size_bytes=16 * sandbox.MIB,
        max_file_bytes=64 * sandbox.MIB,
        system_root=str(executor.system_root),
    )
    oci = sandbox.build_oci_spec(spec)
    oci["process"]["args"] = [
        sandbox.SANDBOX_PYTHON, "-I", "/runner/standby.py", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    oci["process"]["env"].append(f"{standby_runner.TOKEN_ENV}={TOKEN}")
    for mount in oci["mounts"]:
        if mount["destination"] in ("/code", "/input"):
            mount["options"] = [o for o in mount["options"] if o != "ro"]
    oci["linux"]["namespaces"] = [n for n in oci["linux"]["namespaces"] if n["type"] != "network"]
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(oci))
    return bundle


def test_standby_runner_in_gvisor_takes_one_push_and_hides_its_token(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    assert executor.runsc is not None
    port = _free_port()
    bundle = _bundle(executor, tmp_path, port)
    cid = f"tako-standby-test-{secrets.token_hex(4)}"
    state = tmp_path / "state"
    argv = [
        executor.runsc, "--root", str(state), f"--platform={executor.platform}", "--network=host",
        "--overlay2=none", "run", "--bundle", str(bundle), cid,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the standby runner in gVisor did not listen"
            time.sleep(0.05)
        code = (
            "import os\n"
            "print('uid', os.getuid())\n"
            "print('env', os.environ.get('TAKO_STANDBY_TOKEN'))\n"
            "try:\n"
            "    print('proc1', 'TAKO' in open('/proc/1/environ', 'rb').read().decode('latin-1'))\n"
            "except OSError as exc:\n"
            "    print('proc1 refused', type(exc).__name__)\n"
        )
        body = {"job_uid": "g", "code": code, "input_data": {}, "config": {"timeout": 20}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/job",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"push refused: {exc.code} {exc.read()!r}") from exc
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([executor.runsc, "--root", str(state), "delete", "-force", cid], capture_output=True)
    envelope = parse_envelope(out.decode())
    assert envelope is not None, err.decode()[-2000:]
    assert envelope["exit_code"] == 0, envelope
    lines = envelope["stdout"].splitlines()
    assert lines[0] == f"uid {sandbox.SANDBOX_UID}"
    assert lines[1] == "env None"
    assert lines[2] in ("proc1 refused PermissionError", "proc1 False"), lines
    assert TOKEN not in envelope["stdout"]
