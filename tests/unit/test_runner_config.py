"""The runner's job.json is one typed model (`tako_vm.models.runner.RunnerConfig`) that every writer
uses; the runner, which may import nothing from the project, reads it over its own `DEFAULTS`.
These tests pin the two sides together."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from tako_operator.core import builders
from tako_runner import runner
from tako_vm.models.crd import PythonJob, PythonJobTypeSpec
from tako_vm.models.runner import RunnerConfig


def test_the_model_and_the_runner_have_the_same_fields_and_defaults() -> None:
    assert RunnerConfig().model_dump(mode="json") == runner.DEFAULTS


def test_a_misspelled_or_mistyped_field_is_refused_by_the_writer() -> None:
    with pytest.raises(pydantic.ValidationError, match="timout"):
        RunnerConfig(timout=3)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="timeout"):
        RunnerConfig(timeout=0)
    with pytest.raises(pydantic.ValidationError, match="environment"):
        RunnerConfig(environment={"A": 1})  # type: ignore[dict-item]


def test_the_runner_reads_what_the_model_writes(tmp_path: Path) -> None:
    config = RunnerConfig(timeout=7, requirements=["six"], environment={"A": "b"}, kill_grace_seconds=0.5)
    path = tmp_path / "job.json"
    path.write_text(config.job_json())
    assert json.loads(path.read_text()) == {
        "timeout": 7,
        "requirements": ["six"],
        "environment": {"A": "b"},
        "kill_grace_seconds": 0.5,
    }  # only what the writer set: the defaults live on both sides, pinned above
    assert runner.load_config(str(path)) == config.model_dump(mode="json")


def test_the_operator_builds_its_job_json_through_the_model() -> None:
    job = PythonJob.model_validate(
        {
            "apiVersion": "takovm.dev/v1alpha1",
            "kind": "PythonJob",
            "metadata": {"name": "j"},
            "spec": {"code": "x"},
        }
    )
    written = builders.runner_config(job, PythonJobTypeSpec(image="python:3.11-slim"), builders.PodSettings())
    assert RunnerConfig.model_validate(written).as_json_dict() == written
    assert written["code_path"] == "/code/main.py" and written["timeout"] >= 1
