"""The kubernetes backend's own input guards, checked before any API call (the API client here fails
the test on first use, so a guard that is gone shows as that failure instead of the 400)."""

from __future__ import annotations

from typing import Any

import pytest

from tako_shim.backends.kubernetes.backend import KubernetesBackend
from tako_shim.config import Settings
from tako_shim.errors import BadRequest


class TouchedApi:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the API was called ({name}) before the input was checked")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", ".", "", "a/b", "..\\..\\windows", "a\x00b"])
async def test_an_artifact_name_that_escapes_is_a_400_before_any_api_call(name: str) -> None:
    backend = KubernetesBackend(Settings(backend="kubernetes"), api=TouchedApi())  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as refused:
        await backend.get_artifact("default", "job-0123456789abcdef", name)
    assert refused.value.detail == "Invalid artifact path"
