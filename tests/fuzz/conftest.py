"""Fixtures for the fuzz tier: a real local server (strict mode, real runsc) configured so that fuzz
submissions are cheap: short timeouts, a small queue (so floods get 503 instead of piling up)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tako_vm.testing import LocalServer, local_server

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
HAVE_RUNSC = shutil.which("runsc", path=RUNSC_PATH) is not None
NO_RUNSC = "runsc not installed (scripts/install-system.sh puts it in .tools/bin); strict mode needs it"

FUZZ_SETTINGS = {
    "security_mode": "strict",
    "max_workers": 2,
    "max_queue_size": 8,
    "default_timeout": 2,
    "max_timeout": 4,
    "api_rate_limit_enabled": False,
    "allow_runtime_requirements": False,  # no pip installs from generated requirement lists
    "session_max_per_tenant": 2,  # generated sessions each hold a sandbox until they end
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if not HAVE_RUNSC:
        pytest.skip(NO_RUNSC)
    with local_server(tmp_path_factory.mktemp("fuzz"), FUZZ_SETTINGS, env={"PATH": RUNSC_PATH}) as server:
        yield server
