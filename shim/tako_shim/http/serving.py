"""Serving the app under hostile connection loads: slowloris, descriptor exhaustion, log floods.

- ``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard limit at start-up (a systemd service
  or a login shell gets a soft limit of 1024 and a far higher hard limit).
- ``connection_cap`` keeps the number of client connections below the descriptor limit, with a reserve
  for the job store, sandboxes and their pipes; connections beyond it get a short 503 and are closed,
  so ``accept`` never fails with "Too many open files".
- A connection that has not delivered a complete request head ``server_header_timeout_seconds`` after
  it connected (or after its last response) is closed: aiohttp's keep-alive timer, set to that value,
  closes a handler that is still waiting for a message. Request bodies have their own timeout
  (``server_body_timeout_seconds``, enforced where the body is read: ``common.parse_body``).
- ``RateLimitFilter`` keeps a storm of identical warnings (one per refused connection) from filling
  the disk: at most ``burst`` records per message per window, then one line saying how many were dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tako_shim.config import Settings
from tako_shim.http.middleware import CORRELATION_HEADER, SECURITY_HEADERS

log = logging.getLogger(__name__)

# Descriptors kept free for everything that is not a client connection: the SQLite database and its
# WAL, log files, and per running sandbox its pipes, cgroup files and runsc's own sockets.
FD_RESERVE_BASE = 128
FD_RESERVE_PER_WORKER = 16
MIN_CONNECTIONS = 16
# Refused connections get 1 s to read their 503; more than this many at once are dropped outright.
REFUSAL_LINGER_SECONDS = 1.0
MAX_LINGERING_REFUSALS = 64
CONNECTIONS_FULL = "Too many open connections to the server. Try again later."


def raise_fd_limit(target: int | None = None) -> int:
    """Raise the soft descriptor limit to the hard limit (or ``target`` if lower); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else 1 << 20
    wanted = min(ceiling, target) if target is not None else ceiling
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:  # a container runtime may forbid it: keep what we have
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    return soft


def connection_cap(configured: int, fd_soft_limit: int, max_workers: int) -> int:
    """``server_max_connections``, lowered to what the descriptor limit leaves after the reserve."""
    reserve = FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * max_workers
    return max(MIN_CONNECTIONS, min(configured, fd_soft_limit - reserve))


def refusal_response() -> bytes:
    """The raw 503 a connection over the cap gets (no handler runs: it must cost nothing)."""
    correlation_id = str(uuid.uuid4())
    body = json.dumps({"detail": CONNECTIONS_FULL, "correlation_id": correlation_id}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "Server: tako-vm\r\n"
        f"X-Correlation-ID: {correlation_id}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Counts open client connections and builds the protocol for each new one (an asyncio factory)."""

    def __init__(self, server: web.Server, cap: int, keepalive_timeout: float) -> None:
        self.server = server
        self.cap = cap
        self.keepalive_timeout = keepalive_timeout
        self.active = 0
        self.lingering = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.active >= self.cap:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "connection cap %d reached; %d connection(s) refused so far", self.cap, self.refused
                )
            return _Refusal(self)
        handler = BrandedRequestHandler(
            self.server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.keepalive_timeout,  # also the header timeout (see the module doc)
            access_log=None,  # type: ignore[arg-type]  # aiohttp checks truthiness; tako_shim.access logs
        )
        return _Counted(handler, self)


def low_level_error(status: int) -> web.Response:
    """The answer to a request aiohttp's parser refused (bad request line, oversized header): the same
    JSON body, correlation id and headers as every other error, and no framework banner."""
    correlation_id = str(uuid.uuid4())
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    detail = "Malformed HTTP request." if status == 400 else f"{phrase}."
    response = web.json_response(
        {"detail": detail, "correlation_id": correlation_id},
        status=status,
        headers={**SECURITY_HEADERS, CORRELATION_HEADER: correlation_id, "Server": "tako-vm"},
    )
    response.force_close()
    return response


class BrandedRequestHandler(RequestHandler):
    """aiohttp's handler, answering its own low-level errors with ``low_level_error``."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response already started
        return low_level_error(status)


class _Counted(asyncio.Protocol):
    """Delegates everything to aiohttp's handler and keeps the guard's count."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.active += 1
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.active -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Refusal(asyncio.Protocol):
    """Answers 503 at once, reads and discards what the client sends, closes after a short linger
    (closing with unread request bytes would reset the connection before the client reads the 503)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.guard.lingering >= MAX_LINGERING_REFUSALS:
            transport.abort()
            return
        self.guard.lingering += 1
        transport.write(refusal_response())
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return False  # close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.guard.lingering -= 1


class RateLimitFilter(logging.Filter):
    """At most ``burst`` WARNING-or-worse records per (logger, message template) per ``window`` seconds;
    the first record after a suppressed stretch says how many were dropped. INFO and below pass."""

    def __init__(self, burst: int = 5, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar message(s) suppressed)"
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


def install_log_rate_limit(logger: logging.Logger | None = None) -> RateLimitFilter:
    """Attach one ``RateLimitFilter`` to every handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    limiter = RateLimitFilter()
    for handler in target.handlers:
        handler.addFilter(limiter)
    return limiter


async def serve(app: web.Application, settings: Settings, sockets: Sequence[socket.socket]) -> None:
    """Serve on the already bound, listening ``sockets`` until SIGINT/SIGTERM with the connection
    guards on; start-up errors (the app's ``on_startup``: the backend) propagate."""
    soft = raise_fd_limit()
    cap = connection_cap(settings.server_max_connections, soft, settings.max_workers)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.server_header_timeout_seconds)
    await runner.setup()  # runs the app's start-up (the backend), which may raise BackendStartError
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    servers: list[asyncio.Server] = []
    try:
        assert runner.server is not None
        guard = ConnectionGuard(runner.server, cap, settings.server_header_timeout_seconds)
        for sock in sockets:
            servers.append(await loop.create_server(guard, sock=sock, backlog=128))
        log.info("open-file limit %d; at most %d client connections", soft, cap)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()
