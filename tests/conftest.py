"""Suite-wide: in CI, skipped tests of a required tier (sandbox, real API server) fail the run."""

from __future__ import annotations

import pytest

from ci_tiers import register


def pytest_configure(config: pytest.Config) -> None:
    register(config)
