"""Fixtures for the sandbox tier: a real LocalExecutor over real runsc (skipped, with the reason, when
runsc cannot start a sandbox on this machine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sandbox_support import Sandbox, real_executor

from tako_shim.backends.local.sandbox.executor import LocalExecutor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def executor() -> Iterator[LocalExecutor]:
    yield from real_executor("tako-sandbox-tests-")


@pytest.fixture
async def sx(executor: LocalExecutor, tmp_path: Path) -> AsyncIterator[Sandbox]:
    yield Sandbox(executor, tmp_path)
    await executor.drain()  # sandboxes are torn down in the background, after their result


@pytest.fixture(autouse=True)
async def _drain_background_teardowns(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Tests that use the shared executor directly: finish its background teardowns on their loop."""
    yield
    if "executor" in request.fixturenames:
        await request.getfixturevalue("executor").drain()
