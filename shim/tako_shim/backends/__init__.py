"""Backends run jobs behind the one ``Backend`` interface: ``local`` (gVisor here) or ``kubernetes``."""

from __future__ import annotations

import importlib

from tako_shim.backends.base import Backend
from tako_shim.config import ConfigError, Settings


def make_backend(settings: Settings) -> Backend:
    """Build the backend named by ``settings.backend`` (imported lazily: each pulls different deps)."""
    if settings.backend == "local":
        from tako_shim.backends.local.backend import LocalBackend

        return LocalBackend(settings)
    try:
        module = importlib.import_module("tako_shim.backends.kubernetes.backend")
    except ImportError as exc:
        raise ConfigError(f"backend: 'kubernetes' is not available ({exc})") from exc
    backend: Backend = module.KubernetesBackend(settings)
    return backend
