"""One signed webhook attempt: resolve once, check every address, connect only to those, never follow a
redirect without checking it again. Bounded connect/read timeouts and a bounded response read.

Signing follows the Standard Webhooks spec through the ``standardwebhooks`` package: headers
``webhook-id`` (the same on every retry), ``webhook-timestamp`` (this attempt, Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

from tako_shim.webhooks.policy import IPAddress, IPNetwork, Target, WebhookRefused, check_addresses, parse_url

MAX_REDIRECTS = 3
USER_AGENT = "tako-vm-webhooks/1"


@dataclass(frozen=True)
class Limits:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_response_bytes: int = 65536


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False  # the policy refused the target (or a redirect): retrying will not help


def signed_headers(secret: str, webhook_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now (``now`` for tests)."""
    stamp = now or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body),
    }


async def resolve_checked(url: str, allowlist: Sequence[IPNetwork]) -> tuple[Target, list[IPAddress]]:
    """Parse ``url``, resolve its host once and check every address (``WebhookRefused`` if one fails)."""
    target = parse_url(url)
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(target.host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise WebhookRefused(f"webhook_url: host {target.host!r} cannot be resolved ({exc})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    check_addresses(target.host, addresses, allowlist)
    return target, addresses


class PinnedResolver(AbstractResolver):
    """Answers only with the addresses that were checked for one host (no second DNS lookup)."""

    def __init__(self, host: str, addresses: Sequence[IPAddress]) -> None:
        self.host = host
        self.addresses = list(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"unexpected host {host!r} (pinned to {self.host!r})")
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def post_once(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowlist: Sequence[IPNetwork],
    limits: Limits,
) -> AttemptResult:
    """POST ``body`` to ``url`` (following at most ``MAX_REDIRECTS`` redirects, each checked again)."""
    timeout = aiohttp.ClientTimeout(
        total=limits.connect_timeout + limits.read_timeout,
        sock_connect=limits.connect_timeout,
        sock_read=limits.read_timeout,
    )
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            target, addresses = await resolve_checked(url, allowlist)
        except WebhookRefused as exc:
            return AttemptResult(False, error=str(exc), refused=True)
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(target.host, addresses), use_dns_cache=False)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
                    allow_redirects=False,
                ) as response,
            ):
                await response.content.read(limits.max_response_bytes)  # bounded; the rest is dropped
                status = response.status
                location = response.headers.get("Location")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return AttemptResult(False, error=f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= status < 300:
            return AttemptResult(True, status_code=status)
        if status in (301, 302, 303, 307, 308) and location:
            url = urljoin(url, location)
            continue
        return AttemptResult(False, status_code=status, error=f"HTTP {status}")
    return AttemptResult(False, error=f"more than {MAX_REDIRECTS} redirects")
