"""`pip install 'tako-vm-k8s[server]'` (or the wheel) plus runsc is enough for `tako-vm server`.

Two checks that stay fast: (1) everything the server imports, from its entry point down to the local
backend, the sandbox executor and the runner, resolves with ONLY the distributions of the base
dependencies and the `server` extra (any other installed distribution -- the dev toolchain, kopf, the
Kubernetes client -- is made unimportable in that interpreter); (2) the built wheel holds every module
of the server, the runner and the SDK, the CRDs, and the `tako-vm` entry point. A real install into a
fresh venv with runsc and a `print(6*7)` job is measured in docs/sandbox.md (about 1 minute with the
pip cache, too slow for this tier).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CLOSURE_PROBE = r"""
import importlib.abc, importlib.metadata as md, re, sys

def requirement_names(dist, extras):
    names = []
    for req in md.distribution(dist).requires or []:
        name, _, marker = req.partition(";")
        wanted = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if wanted and not set(wanted) & extras:
            continue
        if "python_version" in marker or "sys_platform" in marker or "platform_" in marker:
            try:
                from packaging.markers import Marker
                plain = re.sub(r"(and|or)?\s*extra\s*==\s*['\"][^'\"]+['\"]", "", marker).strip()
                if plain and not Marker(plain).evaluate():
                    continue
            except Exception:
                pass
        names.append(re.split(r"[\s\[<>=!~;(]", name.strip(), maxsplit=1)[0])
    return names

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

closure, todo = set(), [("tako-vm-k8s", {"server"})]
while todo:
    dist, extras = todo.pop()
    if norm(dist) in closure:
        continue
    closure.add(norm(dist))
    try:
        todo += [(n, set()) for n in requirement_names(dist, extras)]
    except md.PackageNotFoundError:
        pass  # an optional dependency that is not installed is not needed either

blocked = {top for top, dists in md.packages_distributions().items()
           if not any(norm(d) in closure for d in dists) and top not in sys.stdlib_module_names}
blocked -= {"tako_vm", "tako_shim", "tako_operator", "tako_runner"}
blocked -= {"_distutils_hack", "pip", "setuptools", "pkg_resources"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not in the server extra's closure")
        return None

sys.meta_path.insert(0, Block())
import tako_vm.cli, tako_shim.server, tako_shim.__main__, tako_shim.http.app
import tako_shim.backends.local.backend, tako_shim.backends.local.sandbox.executor
import tako_shim.backends.local.sandbox.warmpool, tako_shim.backends.local.store
import tako_shim.backends.local.sandbox.cgroups, tako_shim.backends.local.datadir
import tako_runner.runner, tako_runner.outcome
from tako_shim.config import load_settings
from tako_shim.backends import make_backend
from tako_shim.http.app import create_app
settings = load_settings(None, env={}, overrides={"backend": "local"})
create_app(settings, make_backend(settings))
dev = {"kopf", "kubernetes", "pytest", "mypy", "hypothesis", "schemathesis", "langchain_core", "kmock"}
print("ok", len(closure), "distributions;", "blocked:", " ".join(sorted(blocked & dev)))
"""


def test_the_server_imports_only_the_server_extras_closure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLOSURE_PROBE], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")
    # the dev toolchain and the operator's libraries are installed here, and were unimportable
    assert {"kopf", "kubernetes", "pytest", "mypy"} <= set(done.stdout.split("blocked:")[1].split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("tako_vm_k8s-*.whl")
    return built


def test_the_wheel_holds_what_the_server_needs_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("shim/tako_shim", "runner/tako_runner", "client/tako_vm"):
        for module in (ROOT / package).rglob("*.py"):
            inside = module.relative_to(ROOT / package.split("/")[0]).as_posix()
            assert inside in names, f"{inside} is missing from the wheel"
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert f"tako_operator/crds/{crd.name}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tako-vm = tako_vm.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    )
    assert re.search(r"Requires-Dist: aiohttp>=3.9; extra == ['\"]server['\"]", metadata)


def make_dry_run(*argv: str) -> str:
    done = subprocess.run(["make", "-n", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_server_takes_port_and_host_and_installs_only_the_server_extra() -> None:
    server = make_dry_run("server", "PORT=8080", "HOST=127.0.0.2")
    assert "bash scripts/bootstrap.sh server\n" in server
    assert "tako-vm server --port 8080 --host 127.0.0.2" in server
    assert re.search(r"tako-vm server\s*$", make_dry_run("server"), re.M)  # no flags: the config's defaults
    assert "bash scripts/bootstrap.sh all,dev\n" in make_dry_run("test")
