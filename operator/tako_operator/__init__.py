"""The kopf operator reconciling PythonJobs into gVisor Pods."""

from __future__ import annotations

import sys


def forbid_kubernetes_client() -> None:
    """Make ``import kubernetes`` fail with ImportError in this process, before kopf is imported.

    kopf imports the official client's models when it is installed (``kopf._cogs.helpers.thirdparty``,
    only to recognise model objects the operator never hands it): ~38 MiB of RSS in an operator that
    talks to the API through its own aiohttp client (``io/kube.py``). Called by the process entry
    points (``python -m tako_operator``, ``tako-vm operator``), never on import: a test process running
    the operator in a thread may import the client itself."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]
