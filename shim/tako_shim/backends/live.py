"""The in-memory output log of a running job, fed as the sandbox produces output, read by event streams."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tako_shim.backends.events import STREAMS

NOTICE_SLACK_CHARS = 200  # room for the truncation notice the runner appends after the cap


@dataclass
class LiveOutput:
    """Output of one running job as it is produced: append-only chunks, capped like the record."""

    limits: dict[str, int]
    chunks: list[tuple[str, int, str]] = field(default_factory=list)  # (stream, start offset, text)
    length: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    closed: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, stream: str, text: str) -> None:
        """Add a chunk (dropped past the cap + notice: user code can write to the runner's own stdout)."""
        room = self.limits[stream] + NOTICE_SLACK_CHARS - self.length[stream]
        text = text[: max(room, 0)]
        if not text or self.closed:
            return
        self.chunks.append((stream, self.length[stream], text))
        self.length[stream] += len(text)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, seconds: float) -> None:
        event = self._changed
        if not self.closed:
            try:
                await asyncio.wait_for(event.wait(), seconds)
            except TimeoutError:
                return
