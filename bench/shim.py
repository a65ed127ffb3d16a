"""Shim suites (filled in below)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def shim_overheads(root: Path, quick: bool) -> dict[str, Any]:
    raise NotImplementedError
