"""Live output on the kubernetes backend: follow the job Pod's log through the API (from any shim replica).

The runner writes the code's output as ``TAKO-LIVE <stdout|stderr> <JSON string>`` lines on its own
stdout while the code runs (the same lines the local executor reads), so the Pod log keeps stdout and
stderr apart even though the log API merges the container's two streams. Each open event stream follows
the log of the job's current Pod (``status.podName``) from its start; the cursor of the stream
(``tako_shim.backends.events``) skips what the client already has. Status transitions come from the
PythonJob (the shim's watch wakes the waits); the record, read from the PythonJob, ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from tako_shim.backends.events import Cursor, EventSource, JobEvent, OutputLog, job_events
from tako_shim.backends.kubernetes.api import KubeApi, KubeApiError
from tako_shim.backends.live import LiveLines, LiveOutput

log = logging.getLogger(__name__)

JOB_CONTAINER = "job"  # the container that runs the runner (tako_operator.core.builders.JOB_CONTAINER)
RETRY_SECONDS = 0.5  # a log that is not there yet (container still starting) is asked for again
MAX_TRIES = 120


class PodLogFollower:
    """Follows one Pod's log into a ``LiveOutput`` in a background task (closed when the log ends)."""

    def __init__(self, api: KubeApi, namespace: str, pod: str, limits: dict[str, int]) -> None:
        self.pod = pod
        self.output = LiveOutput(limits)
        self._task = asyncio.create_task(self._follow(api, namespace), name=f"tako-follow-{pod}")

    async def _follow(self, api: KubeApi, namespace: str) -> None:
        parser = LiveLines()
        try:
            for _ in range(MAX_TRIES):
                received = False
                try:
                    async for chunk in api.follow_pod_log(namespace, self.pod, JOB_CONTAINER):
                        received = True
                        for stream, text in parser.feed(chunk):
                            self.output.append(stream, text)
                    return
                except KubeApiError as exc:
                    if received:
                        log.info("log of pod %s ended early (%s); the record completes it", self.pod, exc)
                        return
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            self.output.close()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def following_events(
    api: KubeApi,
    namespace: str,
    job_id: str,
    cursor: Cursor,
    *,
    read_job: Callable[[], Awaitable[dict[str, Any]]],
    status_of: Callable[[dict[str, Any]], str],
    record_of: Callable[[dict[str, Any]], Any],
    wait: Callable[[float], Awaitable[None]],
    limits: dict[str, int],
) -> AsyncGenerator[JobEvent, None]:
    follower: PodLogFollower | None = None
    latest: dict[str, Any] = {}

    async def status() -> str:
        nonlocal follower
        job = await read_job()
        latest["job"] = job
        current = status_of(job)
        pod = (job.get("status") or {}).get("podName")
        if current == "running" and pod and (follower is None or follower.pod != pod):
            if follower is not None:
                await follower.close()
            follower = PodLogFollower(api, namespace, str(pod), limits)
        return current

    async def record() -> Any:
        return record_of(latest.get("job") or await read_job())

    def live() -> OutputLog | None:
        return follower.output if follower is not None else None

    try:
        async for event in job_events(EventSource(job_id, status, record, live, wait), cursor):
            yield event
    finally:
        if follower is not None:
            await follower.close()
