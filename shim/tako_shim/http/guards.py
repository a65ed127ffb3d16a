"""Request guards at the HTTP boundary: body read timeout, browser (CSRF / DNS rebinding) checks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tako_shim.config import Settings, is_loopback
from tako_shim.errors import ShimError
from tako_shim.http.middleware import CONSOLE_PREFIX


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` (quotes and backslashes escaped, anything else
    replaced) and the exact name as RFC 5987 ``filename*``: a name cannot break out of the header."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 else "_" for ch in name)
    fallback = fallback.replace("\\", "\\\\").replace('"', '\\"')
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class BodyTimeout(ShimError):
    status = 408


async def read_body(request: web.Request, seconds: float) -> bytes:
    """The whole request body, or a 408 naming the limit when the client trickles it."""
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(
            f"Request body not received within {seconds:g} s (server_body_timeout_seconds).",
            headers={"Connection": "close"},
        ) from None


# -- browser guards: CSRF and DNS rebinding ----------------------------------------------------------

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"  # the console's forms only (they carry a CSRF token)
SAFE_FETCH_SITES = frozenset({"same-origin", "none"})


class UnsupportedMediaType(ShimError):
    status = 415


class Forbidden(ShimError):
    status = 403


@dataclasses.dataclass(frozen=True)
class BrowserPolicy:
    """What a request must look like to be served; pure, built once from the settings.

    ``hosts``: accepted ``Host`` headers (``name`` matches any port, ``name:port`` only that port);
    ``None`` turns the check off. ``origins``: cross-origin pages allowed to call the API (a console).
    """

    hosts: frozenset[str] | None
    origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserPolicy:
        if settings.server_allowed_hosts:
            hosts: frozenset[str] | None = frozenset(settings.server_allowed_hosts)
        elif is_loopback(settings.server_host):
            # Any port: what DNS rebinding changes is the name, and a test or a second server may sit
            # on a port the configuration does not know (server_port 0, an in-process test server).
            hosts = frozenset(LOOPBACK_NAMES)
        else:
            hosts = None  # a network bind has auth on (config.py refuses it otherwise)
        return cls(hosts=hosts, origins=frozenset(settings.server_allowed_origins))

    def host_allowed(self, host: str) -> bool:
        if self.hosts is None:
            return True
        host = host.strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") and ":" in host else host
        return host in self.hosts or name in self.hosts

    def problem(
        self, method: str, headers: Mapping[str, str], has_body: bool, *, form_ok: bool = False
    ) -> ShimError | None:
        """The refusal a request earns, or ``None``: wrong ``Host``, cross-origin, or a non-JSON body.

        ``form_ok``: the console's routes, whose handlers verify a CSRF token, also take form bodies."""
        host = headers.get("Host", "")
        if not self.host_allowed(host):
            return Forbidden(
                f"Host {host[:100]!r} is not served here; add it to server_allowed_hosts "
                "(this refuses DNS-rebinding pages)."
            )
        origin = headers.get("Origin")
        configured = origin is not None and origin.lower() in self.origins
        if origin is not None and not configured and origin.lower() not in self._same_origin(host):
            return Forbidden(
                f"Cross-origin request from {origin[:100]!r} refused; allow a console's origin with "
                "server_allowed_origins."
            )
        site = headers.get("Sec-Fetch-Site", "").lower()
        if site and site not in SAFE_FETCH_SITES and not configured:
            return Forbidden(
                f"Cross-site browser request refused (Sec-Fetch-Site: {site[:20]}); allow a console's "
                "origin with server_allowed_origins."
            )
        if method in BODY_METHODS and has_body:
            media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json" and not (form_ok and media_type == FORM_MEDIA_TYPE):
                return UnsupportedMediaType(
                    f"Content-Type must be application/json, got {media_type[:100] or 'none'!r}."
                )
        return None

    @staticmethod
    def _same_origin(host: str) -> set[str]:
        host = host.strip().lower()
        return {f"http://{host}", f"https://{host}"} if host else set()


def browser_guard(settings: Settings) -> Middleware:
    """The aiohttp middleware enforcing ``BrowserPolicy`` (errors reach ``boundary`` as JSON)."""
    policy = BrowserPolicy.from_settings(settings)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = policy.problem(
            request.method,
            request.headers,
            request.body_exists,
            form_ok=request.path.startswith(CONSOLE_PREFIX),
        )
        if problem is not None:
            raise problem
        return await handler(request)

    return guard
