"""Where a webhook may go (SSRF guard): pure checks of a URL and of the addresses its host resolves to.

Refused unless ``webhook_allowlist`` names them: loopback, private, link-local (which holds the cloud
metadata address 169.254.169.254), shared (100.64.0.0/10, Alibaba's metadata 100.100.100.200), multicast,
reserved and unspecified addresses, in IPv4 and IPv6, including IPv4 addresses embedded in IPv6 (mapped
``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``). A host is
resolved once; every address must pass, and the connection is then made to those checked addresses only
(``tako_vm.delivery.send``), so a second DNS answer cannot point it elsewhere (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "169.254.170.2")
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class WebhookRefused(ValueError):
    """The URL or one of its addresses is not allowed; the message says which and why."""


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: scheme, host (as written, no brackets), port and the path to request."""

    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """``http``/``https`` with a host, no user info; raises ``WebhookRefused`` naming the problem."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook_url: {url[:100]!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook_url: scheme must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise WebhookRefused("webhook_url: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook_url: credentials in the URL are not allowed (sign with the secret)")
    if any(ord(ch) < 33 for ch in url):
        raise WebhookRefused("webhook_url: control characters or spaces are not allowed")
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), else None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in NAT64) or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` may not receive webhooks (``None``: it is a public unicast address)."""
    inner = embedded_ipv4(address)
    if inner is not None:
        problem = address_problem(inner)
        return f"it embeds {inner}, {problem}" if problem else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for flag, what in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "the unspecified address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, flag):
            return what
    if not address.is_global:
        return "not a public address"
    return None


def allowed(address: IPAddress, allowlist: Iterable[IPNetwork]) -> bool:
    inner = embedded_ipv4(address)
    return any(address in net or (inner is not None and inner in net) for net in allowlist)


def check_addresses(host: str, addresses: Iterable[IPAddress], allowlist: Iterable[IPNetwork]) -> None:
    """Every address must be public or allowlisted; raises ``WebhookRefused`` naming the first that is not."""
    nets = list(allowlist)
    found = list(addresses)
    if not found:
        raise WebhookRefused(f"webhook_url: host {host!r} has no address")
    for address in found:
        if allowed(address, nets):
            continue
        problem = address_problem(address)
        if problem is not None:
            shown = host if host == str(address) else f"{host!r} ({address})"
            raise WebhookRefused(
                f"webhook_url: {shown} is {problem}; webhooks only go to public addresses unless "
                "webhook_allowlist permits it"
            )


def parse_allowlist(entries: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]
