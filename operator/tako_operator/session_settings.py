"""Operator-wide knobs of PythonSessions (TAKO_OPERATOR_SESSION_*); per-session ones are in the spec.

Kept apart from settings.py (one field there, ``Settings.sessions``) so the session feature is one
module to read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SHIM_POD_LABELS = {"app.kubernetes.io/name": "tako-vm", "app.kubernetes.io/component": "shim"}


@dataclass(frozen=True)
class SessionSettings:
    # The port the session runner listens on in its Pod.
    port: int = 8791
    # Who may send code: the shim's Pods (namespace + labels). No labels = nobody (fail closed).
    client_namespace: str | None = None
    client_pod_labels: dict[str, str] = field(default_factory=lambda: dict(SHIM_POD_LABELS))
    # An ended PythonSession (its Pod is gone at once) is kept this long so GET answers 410 with the
    # reason, then deleted.
    retention_seconds: int = 3600
    # The Pod's activeDeadlineSeconds is the session's TTL plus this: the kubelet ends a session whose
    # TTL the operator could not enforce (operator down).
    deadline_grace_seconds: int = 60

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65_535:
            raise ValueError(f"TAKO_OPERATOR_SESSION_PORT must be 1..65535, got {self.port}")
        if not 0 <= self.retention_seconds <= 30 * 86_400:
            raise ValueError(
                f"TAKO_OPERATOR_SESSION_RETENTION_SECONDS must be 0..2592000, got {self.retention_seconds}"
            )
        if not 1 <= self.deadline_grace_seconds <= 3600:
            raise ValueError("session deadline_grace_seconds must be 1..3600")


def _labels(raw: str, name: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"{name} must be k=v,k=v; got {raw!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def sessions_from_env(env: Mapping[str, str]) -> SessionSettings:
    """TAKO_OPERATOR_SESSION_PORT, _CLIENT_NAMESPACE, _CLIENT_LABELS (k=v,k=v), _RETENTION_SECONDS."""
    kwargs: dict[str, object] = {}
    for key, env_name in (("port", "PORT"), ("retention_seconds", "RETENTION_SECONDS")):
        raw = env.get(f"TAKO_OPERATOR_SESSION_{env_name}", "").strip()
        if raw:
            if not raw.isdigit():
                raise ValueError(f"TAKO_OPERATOR_SESSION_{env_name} must be a whole number, got {raw!r}")
            kwargs[key] = int(raw)
    if env.get("TAKO_OPERATOR_SESSION_CLIENT_NAMESPACE"):
        kwargs["client_namespace"] = env["TAKO_OPERATOR_SESSION_CLIENT_NAMESPACE"]
    labels = env.get("TAKO_OPERATOR_SESSION_CLIENT_LABELS")
    if labels is not None:
        kwargs["client_pod_labels"] = _labels(labels, "TAKO_OPERATOR_SESSION_CLIENT_LABELS")
    return SessionSettings(**kwargs)  # type: ignore[arg-type]
