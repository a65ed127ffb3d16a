"""One signed webhook attempt over the network: resolve once, check every address (``policy``), connect
only to those (the request goes to the checked IP; ``Host`` and TLS SNI/certificate checks keep the name),
never follow a redirect without checking it again. Bounded connect/read timeouts, a bounded total time
and a bounded response read; proxies from the environment are ignored.

Both senders use it: the shim's dispatcher (local backend) and the operator (``tako_operator.io.webhooks``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urljoin

import httpx

from tako_vm.delivery.policy import IPAddress, IPNetwork, Target, WebhookRefused, check_addresses, parse_url
from tako_vm.delivery.state import AttemptResult, Limits

MAX_REDIRECTS = 3
USER_AGENT = "tako-vm-webhooks/1"
REDIRECTS = (301, 302, 303, 307, 308)


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


async def _post_to(
    client: httpx.AsyncClient, url: str, target: Target, address: IPAddress, body: bytes,
    headers: dict[str, str], limits: Limits,
) -> tuple[int, str | None]:  # fmt: skip
    """POST to ``address`` (the checked IP) with the URL's own Host and TLS name; (status, Location)."""
    parsed = httpx.URL(url)
    pinned = parsed.copy_with(host=str(address))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    request = client.build_request(
        "POST",
        pinned,
        content=body,
        headers={
            "Host": parsed.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **headers,
        },
        extensions=extensions,
    )
    response = await client.send(request, stream=True)
    try:
        read = 0
        async for chunk in response.aiter_raw():  # bounded; the rest is dropped
            read += len(chunk)
            if read >= limits.max_response_bytes:
                break
    finally:
        await response.aclose()
    return response.status_code, response.headers.get("Location")


async def post_once(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowlist: Sequence[IPNetwork],
    limits: Limits,
) -> AttemptResult:
    """POST ``body`` to ``url`` (following at most ``MAX_REDIRECTS`` redirects, each checked again)."""
    timeout = httpx.Timeout(
        connect=limits.connect_timeout,
        read=limits.read_timeout,
        write=limits.read_timeout,
        pool=limits.connect_timeout,
    )
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                target, addresses = await resolve_checked(url, allowlist)
            except WebhookRefused as exc:
                return AttemptResult(False, error=str(exc), refused=True)
            status, location = 0, None
            error: str | None = "no address"
            for address in addresses:  # the checked addresses only, in resolver order
                try:
                    async with asyncio.timeout(limits.connect_timeout + limits.read_timeout):
                        status, location = await _post_to(client, url, target, address, body, headers, limits)
                    error = None
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]  # try the next address
                except (httpx.HTTPError, TimeoutError, OSError) as exc:
                    return AttemptResult(False, error=f"{type(exc).__name__}: {exc}"[:300])
            if error is not None:
                return AttemptResult(False, error=error)
            if 200 <= status < 300:
                return AttemptResult(True, status_code=status)
            if status in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            return AttemptResult(False, status_code=status, error=f"HTTP {status}")
    return AttemptResult(False, error=f"more than {MAX_REDIRECTS} redirects")
