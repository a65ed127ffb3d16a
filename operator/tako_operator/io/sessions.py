"""API calls for PythonSessions and their token Secrets, on top of ``io.kube.Kube`` (its client and
executor; this module imports no Kubernetes client of its own, so ``io.kube`` stays the only one)."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

from tako_operator.core.pods import format_time
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

    async def secret_exists(self, namespace: str, name: str) -> bool:
        core = self.kube.core
        try:
            await self.kube._call(core.read_namespaced_secret, name, namespace)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise
        return True

    async def create_secret(self, secret: dict[str, Any]) -> bool:
        core = self.kube.core
        namespace = secret["metadata"]["namespace"]
        created: bool = await self.kube._create(
            core.create_namespaced_secret, core.read_namespaced_secret, namespace, secret
        )
        return created

    async def delete_secret(self, namespace: str, name: str) -> bool:
        deleted: bool = await self.kube._delete(self.kube.core.delete_namespaced_secret, name, namespace)
        return deleted

    async def emit_event(self, session: dict[str, Any], reason: str, message: str, type_: str) -> None:
        """A core/v1 Event on the PythonSession (``kubectl describe pysession``); never fatal."""
        meta = session["metadata"]
        now = format_time(datetime.datetime.now(datetime.UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PythonSession",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "tako-vm-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(Exception):
            await self.kube._call(self.kube.core.create_namespaced_event, meta["namespace"], body=event)
