"""What the integration tests that start a real local server share: where runsc is, the skip when it is
not installed, and a strict-mode server with the settings most of them use."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tako_vm.testing import LocalServer, local_server

ROOT = Path(__file__).resolve().parents[2]
RUNSC_PATH = f"{ROOT / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
needs_runsc = pytest.mark.skipif(
    shutil.which("runsc", path=RUNSC_PATH) is None,
    reason="runsc not installed (scripts/install-system.sh puts it in .tools/bin); strict mode needs it",
)
# The module marks of a test file whose tests run jobs in real gVisor.
SANDBOX_TESTS = [pytest.mark.sandbox, needs_runsc]
STRICT_SETTINGS: dict[str, Any] = {
    "security_mode": "strict",
    "max_workers": 2,
    "api_rate_limit_enabled": False,
}


@contextmanager
def strict_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, via_cli: bool = False, **settings: Any
) -> Iterator[LocalServer]:
    """A local server in strict mode (real runsc) in a fresh directory ``name``; ``settings`` add to or
    override ``STRICT_SETTINGS``."""
    data_dir = tmp_path_factory.mktemp(name)
    with local_server(
        data_dir, {**STRICT_SETTINGS, **settings}, env={"PATH": RUNSC_PATH}, via_cli=via_cli
    ) as running:
        yield running
