"""The operator and shim images (docker/*.Dockerfile) agree with the chart and the package.

No Docker engine runs here, so the images are not built in this suite (tests/e2e builds them on
kind). What can be checked without building: the base is pinned by digest, the final stage runs as
the non-root uid the chart's securityContext expects, the installed extras exist in pyproject.toml,
the default command is one the CLI accepts, and the build context keeps what the build copies.
"""

from __future__ import annotations

import pathlib
import re
import tomllib

import pytest
import yaml

from tako_vm.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "operator": ROOT / "docker" / "operator.Dockerfile",
    "shim": ROOT / "docker" / "shim.Dockerfile",
}
VALUES = yaml.safe_load((ROOT / "charts" / "tako-vm" / "values.yaml").read_text())


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_base_image_is_pinned_by_digest(component: str) -> None:
    text = DOCKERFILES[component].read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert all(
        line.split()[1] in {"${PYTHON_IMAGE}"} for line in re.findall(r"^FROM .*$", text, re.MULTILINE)
    )


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_final_stage_runs_as_the_non_root_uid_the_chart_expects(component: str) -> None:
    stage = final_stage(DOCKERFILES[component].read_text())
    (user,) = re.findall(r"^USER (\d+):(\d+)$", stage, re.MULTILINE)
    expected = VALUES[component]["podSecurityContext"]
    assert (int(user[0]), int(user[1])) == (expected["runAsUser"], expected["runAsGroup"])
    assert int(user[0]) != 0


@pytest.mark.parametrize(
    ("component", "extras"), [("operator", {"operator"}), ("shim", {"server", "operator"})]
)
def test_installed_extras_exist_in_pyproject(component: str, extras: set[str]) -> None:
    text = DOCKERFILES[component].read_text()
    (spec,) = re.findall(r'"\.\[([a-z,]+)\]"', text)
    assert set(spec.split(",")) == extras
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert extras <= set(pyproject["project"]["optional-dependencies"])
    assert pyproject["project"]["scripts"]["tako-vm"] == "tako_vm.cli:main"


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_default_command_is_accepted_by_the_cli(component: str) -> None:
    stage = final_stage(DOCKERFILES[component].read_text())
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", stage, re.MULTILINE)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", stage, re.MULTILINE)
    assert yaml.safe_load(entrypoint) == ["tako-vm"]
    args = build_parser().parse_args(yaml.safe_load(cmd))
    assert args.command == component.replace("shim", "server")


def test_build_context_keeps_everything_the_dockerfiles_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :]  # everything excluded, then re-included explicitly
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for dockerfile in DOCKERFILES.values():
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.MULTILINE):
            for source in sources.split():
                assert source.rstrip("/") in kept, (
                    f"{dockerfile.name} copies {source}, .dockerignore drops it"
                )
                assert (ROOT / source).exists(), source
