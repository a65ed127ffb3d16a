"""scripts/bootstrap.sh on a half-made .venv (issue #18): `python3 -m venv` that failed for want of
python3-venv leaves a .venv without pip; bootstrap.sh must make it again rather than reuse it.

Runs the real script in a scratch copy of the layout it expects (scripts/, pyproject.toml,
constraints.txt) with a one-module project, so pip has little to install (it still fetches pip and
the build backend from the package index, as a user's first `make setup` does)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "bootstrap-probe"
version = "0.0.1"

[project.optional-dependencies]
server = []

[tool.setuptools]
py-modules = ["bootstrap_probe"]
"""


def test_a_venv_without_pip_is_recreated_and_the_project_installed(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "constraints.txt").write_text("")
    (tmp_path / "bootstrap_probe.py").write_text("ANSWER = 42\n")
    # the broken state a failed `python3 -m venv` leaves: an interpreter, no pip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    broken = subprocess.run([tmp_path / ".venv/bin/python", "-m", "pip", "--version"], capture_output=True)
    assert broken.returncode != 0  # "No module named pip"

    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh", "server"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ".venv is broken (.venv/bin/python -m pip --version fails); recreating it" in done.stderr
    pip = subprocess.run([tmp_path / ".venv/bin/python", "-m", "pip", "--version"], capture_output=True)
    assert pip.returncode == 0
    probe = subprocess.run(
        [tmp_path / ".venv/bin/python", "-c", "import bootstrap_probe; print(bootstrap_probe.ANSWER)"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert probe.stdout == "42\n"
    assert (tmp_path / ".venv" / ".installed").read_text().strip() == "server"
    # a second run keeps the now healthy venv
    again = subprocess.run(
        ["bash", "scripts/bootstrap.sh", "server"], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0 and "recreating" not in again.stderr
