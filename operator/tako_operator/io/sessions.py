"""API calls for PythonSessions (get, status, delete, Events), on top of ``io.kube.Kube`` (its client and
executor; this module imports no Kubernetes client of its own, so ``io.kube`` stays the only one)."""

from __future__ import annotations

import contextlib
from typing import Any

from tako_operator.io.kube import GROUP, VERSION, Kube

SESSIONS = "pythonsessions"


class SessionApi:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def _custom(self, method: str, namespace: str, *args: Any) -> dict[str, Any] | None:
        """A call on the PythonSession ``args[0]``; None when it is gone (404)."""
        fn = getattr(self.kube.custom, method)
        try:
            return self.kube._json(await self.kube._call(fn, GROUP, VERSION, namespace, SESSIONS, *args))
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._custom("get_namespaced_custom_object", namespace, name)

    async def patch_session_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        return await self._custom(
            "patch_namespaced_custom_object_status", namespace, name, {"status": status}
        )

    async def delete_session(self, namespace: str, name: str) -> bool:
        return await self._custom("delete_namespaced_custom_object", namespace, name) is not None

    async def emit_event(self, session: dict[str, Any], reason: str, message: str, type_: str) -> None:
        """A core/v1 Event on the PythonSession (``kubectl describe pysession``); never fatal."""
        with contextlib.suppress(Exception):
            await self.kube.emit_event(session, reason, message, type_, kind="PythonSession")
