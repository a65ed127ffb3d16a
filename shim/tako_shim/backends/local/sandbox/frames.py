"""The runner's result frame as the host reads it: a bounded tail of the sandbox's stdout and the
HMAC check of the envelope frame that ends it. Pure (no I/O, no event loop): ``job.FrameWatch`` feeds
these from the sandbox's pipe and runs the check in a worker thread.

The runner writes ``<frame>TAKO-ENVELOPE-MAC <frame length> <hmac-sha256 hex>\\n`` as its very last
output, with a per-sandbox key it read from its stdin before any user code existed (docs/sandbox.md).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from tako_runner.outcome import HEADER, MAC_MARKER, parse_envelope

MAX_MAC_CHECKS = 3  # candidate MAC lines verified while a sandbox runs (user code can print fake ones)
MAC_LINE_MAX = 200
MAC_LINE_PREFIX = b"\n" + MAC_MARKER.encode("ascii") + b" "


class TailBuffer:
    """Keeps only the last ``limit`` bytes: the runner's frame is always at the very end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        return bytes(self.data[-self.limit :]).decode("utf-8", errors="replace")


def ends_with_mac_line(buffer: TailBuffer) -> bool:
    """Whether the buffer's last line looks like a MAC line (a candidate worth verifying)."""
    return MAC_LINE_PREFIX in bytes(buffer.data[-MAC_LINE_MAX:])


def authenticated_envelope(data: bytes, key: bytes) -> dict[str, Any] | None:
    """The envelope whose frame ends ``data`` followed by a valid ``TAKO-ENVELOPE-MAC`` line, else None.

    Only a process that knows ``key`` can produce the line, and user code never sees the key.
    """
    if not key or not data.endswith(b"\n"):
        return None
    line_start = data.rfind(b"\n", max(0, len(data) - MAC_LINE_MAX), len(data) - 1) + 1
    parts = data[line_start:].split()
    if line_start == 0 or len(parts) != 3 or parts[0] != MAC_MARKER.encode("ascii"):
        return None
    try:
        length = int(parts[1])
    except ValueError:
        return None
    framed = data[line_start - length : line_start]
    if length <= 0 or length > line_start or not framed.startswith(b"\n" + HEADER.encode("ascii") + b" "):
        return None
    expected = hmac.new(key, framed, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(expected, parts[2]):
        return None
    return parse_envelope(framed.decode("ascii", errors="replace"))
