"""API calls for PythonSessions (get, status, delete, Events), on top of ``io.kube.Kube``'s generic custom
resource calls (this module has no HTTP client of its own, so ``io.kube`` stays the only one)."""

from __future__ import annotations

import contextlib
from typing import Any

from tako_operator.io.kube import Kube

SESSIONS = "pythonsessions"


class SessionApi:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get_custom(namespace, SESSIONS, name)

    async def patch_session_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        return await self.kube.patch_custom(namespace, SESSIONS, name, {"status": status}, status=True)

    async def delete_session(self, namespace: str, name: str) -> bool:
        return await self.kube.delete_custom(namespace, SESSIONS, name)

    async def emit_event(self, session: dict[str, Any], reason: str, message: str, type_: str) -> None:
        """A core/v1 Event on the PythonSession (``kubectl describe pysession``); never fatal."""
        with contextlib.suppress(Exception):
            await self.kube.emit_event(session, reason, message, type_, kind="PythonSession")
