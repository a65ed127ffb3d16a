"""Slow and numerous clients against a real server process (issue #19, finding 3).

No API key is needed for any of these attacks, so they matter even with auth on. The server runs
``security_mode: permissive`` (no job runs here; what is attacked is the HTTP front door) under a
shell wrapper that sets its open-file limit the way a systemd service or a login shell gets it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tako_vm.testing import LocalServer, local_server

pytestmark = pytest.mark.slow
HEALTH_BUDGET_SECONDS = 0.5
BASE = {"security_mode": "permissive", "warm_pool_size": 0, "api_rate_limit_enabled": False}


def limited_python(directory: Path, soft: int, hard: int | None = None) -> str:
    """An interpreter wrapper whose process starts with ``ulimit -Sn soft`` (and ``-Hn hard``)."""
    script = directory / "python-ulimit.sh"
    hard_line = f"ulimit -Hn {hard}\n" if hard is not None else ""
    script.write_text(f'#!/bin/sh\nulimit -Sn {soft}\n{hard_line}exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def start(
    tmp_path: Path, settings: dict[str, object], soft: int, hard: int | None = None
) -> Iterator[LocalServer]:
    with local_server(tmp_path, {**BASE, **settings}, python=limited_python(tmp_path, soft, hard)) as server:
        yield server


async def open_slow(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections that each send the first line of a request and nothing more (yet)."""
    opened = []
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        writer.write(b"GET /executions HTTP/1.1\r\n")
        opened.append((reader, writer))
    return opened


async def trickle(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], seconds: float) -> None:
    """One header line per connection every second (a slowloris), for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _, writer in conns:
            if not writer.is_closing():
                writer.write(b"X-Slow: 1\r\n")
        await asyncio.sleep(1.0)


async def probe_health(url: str, seconds: float) -> list[float]:
    """Latency of a fresh ``GET /health`` every 0.25 s; a failure counts as 10 s."""
    latencies = []
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                ok = (await client.get(f"{url}/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.monotonic() - started if ok else 10.0)
            await asyncio.sleep(0.25)
    return latencies


def close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


@pytest.fixture
def fd_limited_server(tmp_path: Path) -> Iterator[LocalServer]:
    # The hard limit is left as it is: systemd gives services soft 1024 / hard 524288.
    yield from start(tmp_path, {}, soft=1024)


async def test_slowloris_with_1100_connections_at_ulimit_1024_leaves_health_fast(
    fd_limited_server: LocalServer,
) -> None:
    conns = await open_slow(fd_limited_server.port, 1100)
    try:
        latencies, _ = await asyncio.gather(probe_health(fd_limited_server.url, 12.0), trickle(conns, 12.0))
    finally:
        close_all(conns)
    assert len(conns) == 1100
    assert max(latencies) < HEALTH_BUDGET_SECONDS, sorted(latencies)[-5:]
    log = fd_limited_server.log()
    assert log.count("Too many open files") < 20, log[-2000:]


async def test_slow_and_silent_connections_are_closed_after_the_header_timeout(tmp_path: Path) -> None:
    for server in start(tmp_path, {"server_header_timeout_seconds": 2}, soft=1024):
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
        slow = await open_slow(server.port, 1)
        started = time.monotonic()
        trickling = asyncio.create_task(trickle(slow, 20.0))
        try:
            assert await asyncio.wait_for(slow[0][0].read(), 10) == b""  # closed by the server
            assert await asyncio.wait_for(silent_reader.read(), 10) == b""
            assert time.monotonic() - started < 8
        finally:
            trickling.cancel()
            silent_writer.close()
            close_all(slow)


async def test_a_trickled_body_gets_a_408_naming_the_limit(tmp_path: Path) -> None:
    for server in start(tmp_path, {"server_body_timeout_seconds": 2}, soft=1024):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /execute/async HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{" % server.port
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 408"), head
            length = int(
                next(
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            body = json.loads(await reader.readexactly(length))
            assert "server_body_timeout_seconds" in body["detail"] and body["correlation_id"]
        finally:
            writer.close()


async def test_connections_over_the_cap_get_a_503_and_the_server_recovers(tmp_path: Path) -> None:
    # Soft and hard at 1024: the limit cannot be raised, so the cap must keep accept() from failing.
    for server in start(tmp_path, {"server_max_connections": 2000}, soft=1024, hard=1024):
        conns = await open_slow(server.port, 1100)
        try:
            await asyncio.sleep(0.5)
            refused = 0
            for reader, _ in conns:
                try:
                    first = await asyncio.wait_for(reader.read(12), 0.05)
                except (TimeoutError, OSError):  # still open, or dropped outright past the linger cap
                    continue
                refused += first.startswith(b"HTTP/1.1 503")
            assert refused > 0  # the connections the cap turned away were told so
        finally:
            close_all(conns)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{server.url}/health")).status_code == 200
        log = server.log()
        assert "Too many open files" not in log, log[-2000:]
        assert "connection cap" in log


def test_the_soft_fd_limit_is_raised_within_the_hard_limit(tmp_path: Path) -> None:
    hard = 4096
    for server in start(tmp_path, {}, soft=1024, hard=hard):
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line


def test_refusal_is_a_well_formed_http_response() -> None:
    from tako_shim.http.serving import refusal_response

    left, right = socket.socketpair()
    with left, right:
        left.sendall(refusal_response())
        left.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := right.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
    assert json.loads(body)["detail"].startswith("Too many open connections")


def test_identical_warnings_are_rate_limited_and_counted() -> None:
    from tako_shim.http.serving import RateLimitFilter

    now = [0.0]
    limiter = RateLimitFilter(burst=5, window=10.0, clock=lambda: now[0])

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, msg, None, None)

    passed = sum(
        limiter.filter(record(logging.ERROR, "socket.accept() out of system resource")) for _ in range(1000)
    )
    assert passed == 5
    assert all(
        limiter.filter(record(logging.INFO, "access line")) for _ in range(100)
    )  # INFO is never dropped
    now[0] = 10.0
    first = record(logging.ERROR, "socket.accept() out of system resource")
    assert limiter.filter(first) and "995 similar message(s) suppressed" in first.getMessage()
