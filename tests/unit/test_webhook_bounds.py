"""One webhook attempt is bounded (issue #13: "bounded connect/read timeouts and response size"), against
real loopback servers: one that never answers, one that answers 200 with an endless body. Both senders
(the shim's dispatcher and the operator) use ``tako_vm.delivery.send.post_once``."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from test_shim_queue import FakeSandboxRunner, make_backend

from tako_vm.delivery.send import post_once
from tako_vm.delivery.state import AttemptResult, Limits
from tako_vm.models.wire import ExecuteRequest

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]
URL = "http://127.0.0.1:{}/hook"
LIMITS = Limits(connect_timeout=0.5, read_timeout=0.5, max_response_bytes=4096)
Receiver = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def post_to(receiver: Receiver) -> tuple[AttemptResult, float]:
    """One delivery attempt to a loopback server answering with ``receiver``, and how long it took."""
    server = await asyncio.start_server(receiver, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        result = await post_once(
            f"http://127.0.0.1:{port}/hook", b"{}", {}, allowlist=LOOPBACK, limits=LIMITS
        )
        return result, time.monotonic() - started
    finally:
        server.close()


async def test_a_receiver_that_never_answers_costs_one_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    result, elapsed = await post_to(silent)
    assert not result.delivered and "Timeout" in (result.error or ""), result
    assert elapsed < 2.0, f"an attempt took {elapsed:.1f} s with a 0.5 s read timeout"


async def test_an_endless_answer_is_read_only_up_to_the_limit() -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        try:
            while sent < 50_000_000:
                writer.write(b"x" * 65536)
                sent += 65536
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass

    result, elapsed = await post_to(endless)
    assert result.delivered and result.status_code == 200, result
    assert elapsed < 2.0 and sent < 10_000_000, f"{sent} bytes sent in {elapsed:.1f} s: the read was not cut"


async def test_a_tenants_default_webhook_url_applies_when_the_submit_names_none(tmp_path: Path) -> None:
    """``webhook_default_urls`` (issue #13: "a per-tenant default in config")."""
    backend = make_backend(
        tmp_path,
        FakeSandboxRunner(),
        webhook_secrets={"default": "whsec_" + "a" * 44},
        webhook_allowlist=["127.0.0.1/32"],
        webhook_default_urls={"default": "http://127.0.0.1:9/hook"},
    )
    await backend.start()
    try:
        job = await backend.submit("default", backend.resolver.resolve(ExecuteRequest(code="print(1)")))
        status = await backend.get_status("default", job.job_id)
        assert status.webhook is not None and status.webhook.url == "http://127.0.0.1:9/hook"
    finally:
        await backend.close()
