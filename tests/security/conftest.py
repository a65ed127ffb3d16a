"""Fixtures for the security tier: a real local server (strict mode, real runsc sandboxes)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tako_vm.testing import LocalServer, local_server

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
HAVE_RUNSC = shutil.which("runsc", path=RUNSC_PATH) is not None
NO_RUNSC = "runsc not installed (scripts/install-system.sh puts it in .tools/bin); strict mode needs it"


@pytest.fixture(scope="session")
def runsc_path() -> str:
    """A PATH with runsc on it (the test is skipped, saying why, where runsc is missing)."""
    if not HAVE_RUNSC:
        pytest.skip(NO_RUNSC)
    return RUNSC_PATH


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if not HAVE_RUNSC:
        pytest.skip(NO_RUNSC)
    settings = {"security_mode": "strict", "max_workers": 2, "api_rate_limit_enabled": False}
    with local_server(tmp_path_factory.mktemp("security"), settings, env={"PATH": RUNSC_PATH}) as running:
        yield running


@pytest.fixture
def http(server: LocalServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
