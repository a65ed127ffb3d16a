"""The sandboxes' root filesystem is the project's (shim/tako_shim/backends/local/rootfs.py), never the
host's:
a file put in the host's /usr/local is invisible in a cold and in a warm sandbox, and the interpreter
sandboxes run is the system root's python3 (the same binary, stdlib and version as its manifest says).
Real runsc; skipped with the reason by the ``executor`` fixture when runsc cannot start a sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_support import Sandbox, make_job

from tako_shim.backends.local import rootfs
from tako_shim.backends.local.sandbox.executor import LocalExecutor, SandboxUnavailable
from tako_shim.backends.local.sandbox.warmpool import WarmPool
from tako_shim.server import run_server

pytestmark = [pytest.mark.sandbox]

USR_LOCAL_DIRS = ("/usr/local/share", "/usr/local/lib", "/usr/local/bin")

PROBE = (
    f"USR_LOCAL_DIRS = {USR_LOCAL_DIRS!r}\n"
    + r"""
import hashlib, json, os, sys, sysconfig
def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()
markers = json.load(open("/input/data.json"))["markers"]
print(json.dumps({
    "visible": {m: os.path.exists(m) for m in markers},
    "usr_local": {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in USR_LOCAL_DIRS},
    "executable": os.path.realpath(sys.executable),
    "version": sys.version.split()[0],
    "stdlib": sysconfig.get_paths()["stdlib"],
    "python_sha256": digest(os.path.realpath(sys.executable)),
    "os_py_sha256": digest(os.__file__),
    "os_py": os.__file__,
}))
"""
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host_markers() -> Iterator[list[str]]:
    """Unique files in the host's /usr/local/share and /usr/local/lib, removed afterwards."""
    token = secrets.token_hex(8)
    created: list[Path] = []
    try:
        for directory in ("/usr/local/share", "/usr/local/lib"):
            Path(directory).mkdir(parents=True, exist_ok=True)
            marker = Path(directory) / f"tako-rootfs-test-{token}"
            marker.write_text("visible to the host only\n")
            marker.chmod(0o644)
            created.append(marker)
        yield [str(m) for m in created]
    finally:
        for marker in created:
            marker.unlink(missing_ok=True)


def check_report(executor: LocalExecutor, stdout: str, markers: list[str]) -> None:
    report = json.loads(stdout)
    root = executor.system_root
    assert all(Path(m).exists() for m in markers)  # the host does have them, while the job ran
    assert report["visible"] == dict.fromkeys(markers, False), report["visible"]
    for directory in USR_LOCAL_DIRS:  # the system root's (empty) /usr/local, not the host's
        inside = root / directory.lstrip("/")
        expected = sorted(os.listdir(inside)) if inside.is_dir() else None
        assert report["usr_local"][directory] == expected, (directory, report["usr_local"][directory])
    # the interpreter is the system root's: same binary and stdlib as in the tree, same version as built
    assert report["python_sha256"] == sha256(root / report["executable"].lstrip("/"))
    assert report["os_py_sha256"] == sha256(root / report["os_py"].lstrip("/"))
    built = rootfs.manifest(root).get("python")
    if isinstance(built, dict):  # trees from `make setup` have a manifest; a brought root may not
        assert report["version"] == built["version"]
    assert report["stdlib"].startswith(f"/usr/lib/python{report['version'].rsplit('.', 1)[0]}")
    host_python = Path("/usr/bin/python3").resolve()
    if host_python.is_file():  # the same path as the host's interpreter, but the tree's file
        same = sha256(host_python) == sha256(root / str(host_python).lstrip("/"))
        assert (report["python_sha256"] == sha256(host_python)) is same


async def test_host_usr_local_is_invisible_and_python_is_the_system_roots(
    sx: Sandbox, host_markers: list[str]
) -> None:
    outcome = await sx.run(PROBE, input_data={"markers": host_markers})
    assert outcome.status == "succeeded", outcome
    check_report(sx.executor, outcome.stdout, host_markers)


@pytest.mark.slow
async def test_a_warm_sandbox_uses_the_same_system_root(
    executor: LocalExecutor, host_markers: list[str], tmp_path: Path
) -> None:
    pool = WarmPool(executor, 1)
    try:
        assert await pool.wait_ready(within_s=60), pool.stats
        outcome = await pool.run(make_job(PROBE, input_data={"markers": host_markers}), tmp_path / "a")
        assert pool.stats["warm_runs"] == 1, pool.stats
    finally:
        await pool.close()
    assert outcome.status == "succeeded", outcome
    check_report(executor, outcome.stdout, host_markers)


def test_strict_mode_refuses_a_missing_system_root_naming_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "no-rootfs"
    with pytest.raises(SandboxUnavailable) as raised:
        LocalExecutor(work_dir=tmp_path / "w", security_mode="strict", rootfs_path=str(missing))
    message = str(raised.value)
    assert "\n" not in message
    assert f"no sandbox root filesystem at {missing}" in message and "make setup" in message


def test_permissive_mode_without_a_system_root_runs_unsandboxed(tmp_path: Path) -> None:
    ex = LocalExecutor(work_dir=tmp_path / "w", security_mode="permissive", rootfs_path=str(tmp_path / "x"))
    assert ex.runtime_info()["runtime"] == "none"


def test_the_server_in_strict_mode_refuses_to_start_without_a_system_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("TAKO_VM_")]:
        monkeypatch.delenv(key)
    missing = tmp_path / "no-rootfs"
    monkeypatch.setenv("TAKO_VM_ROOTFS_PATH", str(missing))
    monkeypatch.setenv("TAKO_VM_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.chdir(tmp_path)  # no ./tako_vm.yaml
    with pytest.raises(SystemExit) as exited:
        run_server(None, "local", "127.0.0.1", 0)
    assert exited.value.code == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if "root filesystem" in line]
    assert len(lines) == 1, lines
    assert str(missing) in lines[0] and "make setup" in lines[0]
    assert lines[0].startswith("tako-vm server: cannot start the local backend: ")


def test_the_install_sandbox_trusts_the_hosts_ca_bundle_else_the_system_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The install sandbox's network is the host's, so is its trust (e.g. a proxy's CA); without a
    host bundle it gets the system root's ca-certificates. Only /etc copies: nothing of the host is bound."""
    from tako_shim.backends.local.sandbox import executor as executor_module

    host = tmp_path / "host-bundle.crt"
    tree = tmp_path / "tree"
    (tree / "etc/ssl/certs").mkdir(parents=True)
    (tree / "etc/ssl/certs/ca-certificates.crt").write_text("TREE CA\n")
    monkeypatch.setattr(executor_module, "HOST_CA_BUNDLES", (str(tmp_path / "absent.crt"), str(host)))
    host.write_text("HOST CA\n")
    executor_module._install_ca_bundle(tmp_path / "etc1", tree)
    assert (tmp_path / "etc1/ssl/certs/ca-certificates.crt").read_text() == "HOST CA\n"
    host.unlink()
    executor_module._install_ca_bundle(tmp_path / "etc2", tree)
    assert (tmp_path / "etc2/ssl/certs/ca-certificates.crt").read_text() == "TREE CA\n"


def test_the_runner_is_precompiled_only_for_the_system_roots_bytecode_format(tmp_path: Path) -> None:
    import importlib.util

    from tako_runner import runner as runner_module
    from tako_shim.backends.local.sandbox import executor as executor_module

    (tmp_path / "runner.py").write_text(Path(runner_module.__file__).read_text())
    same = {"magic": importlib.util.MAGIC_NUMBER.hex(), "cache_tag": sys.implementation.cache_tag}
    entry = executor_module._compile_runner(tmp_path, same)
    assert entry == f"__pycache__/runner.{sys.implementation.cache_tag}.pyc"
    assert (tmp_path / entry).read_bytes()[:4] == importlib.util.MAGIC_NUMBER
    other = {"magic": "0d0d0d0a", "cache_tag": "cpython-399", "version": "3.99.0"}
    assert executor_module._compile_runner(tmp_path, other) == "runner.py"
    assert executor_module._compile_runner(tmp_path, {}) == "runner.py"  # a root without a manifest
