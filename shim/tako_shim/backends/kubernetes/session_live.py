"""A running session call's live output on the kubernetes backend, read from the session Pod.

The Pod's server keeps the current (or last) call's output as it is written and answers
``GET /events?execution=<id>&after=<n>&wait=<s>`` (token-authenticated, ``tako_runner/session_server.py``).
``PodFeed`` long-polls it and is the ``OutputLog`` of ``tako_shim.backends.events.job_events``: any shim
replica can serve the stream, since the Pod holds the output and every replica can derive its token.
Finished calls stream from their audit record (``KubeSessions.events``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tako_shim.backends.events import Cursor, EventSource, JobEvent, job_events
from tako_shim.backends.live import LiveOutput
from tako_vm.models.sessions import SessionExecution

# (after, wait seconds) -> the Pod's answer, or None when the Pod does not know the call (any more)
Fetch = Callable[[int, float], Awaitable[dict[str, Any] | None]]
MAX_WAIT_SECONDS = 10.0


class CallLost(Exception):
    """The Pod no longer has the call (a newer call replaced it, or the Pod is gone)."""


class PodFeed:
    """The call's output so far (an ``OutputLog``): ``changed`` long-polls the Pod for more."""

    def __init__(
        self, fetch: Fetch, limits: dict[str, int], build: Callable[[dict[str, Any]], SessionExecution]
    ):
        self.fetch = fetch
        self.build = build  # the Pod's reply -> the call's execution (the ``result`` event)
        self.output = LiveOutput(limits)
        self.index = 0  # chunks of the Pod's list read so far
        self.state = "queued"
        self.reply: dict[str, Any] | None = None
        self.lost = False
        self.chunks: list[tuple[str, int, str]] = self.output.chunks  # the same (append-only) list
        self.closed = False

    def _close(self) -> None:
        self.output.close()
        self.closed = True

    async def poll(self, wait: float) -> bool:
        """Read what is new (waiting up to ``wait`` s at the Pod); False if the Pod does not know the call."""
        answer = await self.fetch(self.index, min(wait, MAX_WAIT_SECONDS))
        if answer is None:
            self.lost = True
            self._close()
            return False
        chunks = answer.get("chunks") or []
        for chunk in chunks:
            if isinstance(chunk, list) and len(chunk) == 2 and chunk[0] in ("stdout", "stderr"):
                self.output.append(chunk[0], str(chunk[1]))
        self.index += len(chunks)
        status = answer.get("status")
        if status == "done" and isinstance(answer.get("reply"), dict):
            self.reply = answer["reply"]
            self._close()
        elif status in ("queued", "running"):
            self.state = status
        return True

    async def changed(self, seconds: float) -> None:
        if not self.closed:
            await self.poll(seconds)

    async def status(self) -> str:
        if self.reply is not None:
            return self.build(self.reply).status
        if self.lost:
            raise CallLost
        return self.state

    async def record(self) -> SessionExecution:
        assert self.reply is not None
        return self.build(self.reply)

    async def wait(self, seconds: float) -> None:
        await self.changed(seconds)


async def stream(
    feed: PodFeed, session_id: str, execution_id: str, cursor: Cursor
) -> AsyncIterator[JobEvent]:
    """The call's events beyond ``cursor``; ends without a result when the Pod loses the call (the client
    reconnects and gets the record)."""
    ident = {"session_id": session_id, "execution_id": execution_id}
    source = EventSource(execution_id, feed.status, feed.record, lambda: feed, feed.wait, ident=ident)
    try:
        async for event in job_events(source, cursor):
            yield event
    except CallLost:
        return
