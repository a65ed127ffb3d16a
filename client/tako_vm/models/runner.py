"""The runner's configuration file, ``/code/job.json``, as one typed model.

The shim's local executor, its warm pool and the operator's ConfigMap builder all write it through
`RunnerConfig`; the runner (runner/tako_runner/runner.py, stdlib only) reads it over its own
``DEFAULTS``. tests/unit/test_runner_config.py pins those defaults to this model's, field by field,
so a writer cannot misspell a key (``extra="forbid"``) and the two sides cannot drift.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunnerConfig(BaseModel):
    """What the runner does for one job: limits, paths inside the sandbox, the install step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: int = Field(default=30, ge=1)
    """Seconds the user code may run."""
    startup_timeout: int = Field(default=120, ge=1)
    """Seconds for the start-up phase, including installing `requirements`."""
    requirements: list[str] = Field(default_factory=list)
    deps_dir: str = "/deps"
    code_path: str = "/code/main.py"
    input_path: str = "/input/data.json"
    output_dir: str = "/output"
    work_dir: str = "/tmp"
    python: str | None = None
    """Interpreter for user code and pip; None: the one running the runner."""
    max_stdout_bytes: int = Field(default=65536, ge=0)
    max_stderr_bytes: int = Field(default=65536, ge=0)
    max_artifact_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_total_artifact_bytes: int = Field(default=50 * 1024 * 1024, ge=0)
    max_artifact_count: int = Field(default=1000, ge=1)
    """Files collected from /output; more is the user's error (``invalid_output``)."""
    max_output_depth: int = Field(default=64, ge=1)
    """Nesting of result.json the runner accepts (pydantic and every client must handle it)."""
    environment: dict[str, str] = Field(default_factory=dict)
    egress_probe: bool = False
    egress_probe_timeout: int | float = 30
    egress_probe_targets: list[tuple[str, int]] = Field(
        default_factory=lambda: [("1.1.1.1", 443), ("8.8.8.8", 53)]
    )
    egress_probe_hostname: str = "pypi.org"
    kill_grace_seconds: float = 2.0
    kill_all_processes: bool | None = None
    """None: only when the runner is the sandbox's init (pid 1)."""
    pip_extra_args: list[str] = Field(default_factory=list)
    live_output: bool = False
    """Forward the code's output while it runs (``TAKO-LIVE`` lines before the frame, for event streams)."""

    def as_json_dict(self) -> dict[str, Any]:
        """The fields the writer set (the runner fills in the rest from the same defaults)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def job_json(self) -> str:
        """The text of ``job.json`` (sorted keys, so a ConfigMap's content is stable)."""
        return json.dumps(self.as_json_dict(), sort_keys=True)
