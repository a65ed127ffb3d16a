"""Readers over a Pod's plain dict and the Kubernetes time formats: defined once for the operator.

Pure: no I/O. ``plan``, ``status``, ``standby``, ``io.kube`` and ``io.leader`` all read times and
container states through these.
"""

from __future__ import annotations

import datetime
from typing import Any

from tako_operator.core.builders import JOB_CONTAINER


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time (``Z`` or an offset; naive means UTC) or a datetime; None when absent or bad."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    """metav1.Time: seconds, UTC, ``Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time_precise(moment: datetime.datetime) -> str:
    """metav1.MicroTime: microseconds, UTC, ``Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The status entry of container ``name`` (init or main), or None."""
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses"):
        for entry in status.get(key) or []:
            if entry.get("name") == name:
                found: dict[str, Any] = entry
                return found
    return None


def container_state(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``state`` of container ``name`` (init or main), or {}."""
    state: dict[str, Any] = (container_status(pod, name) or {}).get("state") or {}
    return state


def terminated(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = container_state(pod, name).get("terminated")
    return found if isinstance(found, dict) else None


def pod_finished(pod: dict[str, Any]) -> bool:
    """The Pod will not run the user's code any further."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or terminated(pod, JOB_CONTAINER) is not None
