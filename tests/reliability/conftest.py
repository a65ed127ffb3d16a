"""Fixtures for fault-injection tests: real server processes (strict mode, real runsc)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import httpx
import pytest
from reliability_support import RUNSC_PATH


@pytest.fixture(scope="session")
def runsc_path() -> str:
    """A PATH with runsc on it (the test is skipped, saying why, where runsc is missing)."""
    if shutil.which("runsc", path=RUNSC_PATH) is None:
        pytest.skip(
            "runsc not installed (scripts/install-system.sh puts it in .tools/bin); strict mode needs it"
        )
    return RUNSC_PATH


@pytest.fixture
def http_factory() -> Iterator[Callable[[str], httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(url: str) -> httpx.Client:
        client = httpx.Client(base_url=url, timeout=120)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
