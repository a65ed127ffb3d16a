"""The in-memory output log of a running job, fed as the sandbox produces output, read by event streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
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

    def notify(self) -> None:
        """Wake the readers without new output (a session call's status changed)."""
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, seconds: float) -> None:
        event = self._changed
        if not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await event.wait()


LIVE_MARKER = b"TAKO-LIVE "  # the runner's live lines: TAKO-LIVE <stdout|stderr> <JSON string>\n
MAX_LIVE_LINE_BYTES = 1 << 20  # a longer line (the envelope body, or junk) is skipped, never buffered


class LiveLines:
    """Picks the runner's live output lines out of its stdout (or a Pod log), chunk by chunk.

    Anything else on that channel (the result frame, whatever user code writes to the runner's own
    stdout) is skipped; a partial line waits for its end, at most ``MAX_LIVE_LINE_BYTES``."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False  # inside a line that is too long to keep

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._skipping:
                if len(self._partial) + len(piece) > MAX_LIVE_LINE_BYTES:
                    self._partial.clear()
                    self._skipping = True
                else:
                    self._partial += piece
                    head = bytes(self._partial[: len(LIVE_MARKER)])
                    if not LIVE_MARKER.startswith(head) and not head.startswith(LIVE_MARKER):
                        self._partial.clear()  # not a live line: skip the rest of it unbuffered
                        self._skipping = True
            if end < 0:
                break
            if not self._skipping:
                parsed = parse_live_line(bytes(self._partial))
                if parsed is not None:
                    found.append(parsed)
            self._partial.clear()
            self._skipping = False
            start = end + 1
        return found


def parse_live_line(line: bytes) -> tuple[str, str] | None:
    if not line.startswith(LIVE_MARKER):
        return None
    stream, _, text = line[len(LIVE_MARKER) :].partition(b" ")
    if stream not in (b"stdout", b"stderr"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return (stream.decode(), value) if isinstance(value, str) else None
