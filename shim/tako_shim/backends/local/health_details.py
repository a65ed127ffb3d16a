"""What `GET /health` says about the local backend beyond liveness: the runsc version and platform in
use, cgroup mode, data dir, warm pool filled/target, auth, and warnings (e.g. the slow ptrace fallback)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tako_shim.config import Settings

PTRACE_WARNING = (
    "runsc {version} runs on the ptrace platform (systrap did not work with this runsc): jobs run, "
    "but syscall-heavy code is 12-20x slower. Debian bookworm's runsc (2022) only has ptrace; "
    "`TAKO_RUNSC_RETRY=1 bash scripts/install-system.sh` fetches the 2024 systrap build into .tools/bin"
)
NO_SANDBOX_WARNING = (
    "security_mode is permissive and runsc is not usable: jobs run WITHOUT a sandbox "
    "(never with untrusted code)"
)


def warm_pool_counts(executor: Any) -> tuple[int, int]:
    """(filled, target) of a warm pool executor; (0, 0) for one without a pool."""
    target = int(getattr(executor, "size", 0) or 0) if getattr(executor, "enabled", False) else 0
    ready = getattr(executor, "_ready", None)
    return (len(ready) if isinstance(ready, list) else 0), target


def runtime_warnings(runtime_info: Mapping[str, Any]) -> list[str]:
    warnings = []
    if runtime_info.get("runtime") == "none":
        warnings.append(NO_SANDBOX_WARNING)
    if runtime_info.get("platform") == "ptrace":
        warnings.append(PTRACE_WARNING.format(version=runtime_info.get("version") or "?"))
    return warnings


def health_details(runtime_info: Mapping[str, Any], executor: Any, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``HealthResponse`` (the fields after ``runtime``)."""
    filled, target = warm_pool_counts(executor)
    return {
        "runsc_version": runtime_info.get("version"),
        "platform": runtime_info.get("platform"),
        "security_mode": settings.security_mode,
        "cgroup": runtime_info.get("cgroup"),
        "data_dir": str(settings.data_dir),
        "warm_pool": {"filled": filled, "target": target},
        "auth_enabled": settings.api_auth_enabled,
        "warnings": runtime_warnings(runtime_info),
    }
