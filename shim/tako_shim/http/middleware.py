"""The HTTP boundary: correlation IDs, security headers, error translation, rate limit, auth, payload cap.

Order (outermost first): ``boundary`` (correlation ID + headers + every error -> JSON, once; a
``StorageBusy``/``StorageFull`` from the job store becomes a 503 with ``Retry-After``), then
``payload_cap``, ``rate_limit`` (meters failed-auth requests too), ``authenticate`` (resolves the
tenant). ``/health``, ``/metrics`` and ``/openapi.json`` are exempt from rate limiting and auth (none of
them carries a tenant's data). ``boundary`` also counts every request in the shim's metrics by its route
template.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from tako_shim.config import DEFAULT_TENANT, Settings
from tako_shim.errors import PayloadTooLarge, RateLimited, ShimError, StorageUnavailable, Unauthorized
from tako_shim.metrics import ShimMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("tako_shim.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXEMPT_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
# The web console authenticates with its own HttpOnly session cookie (tako_shim/http/console/auth.py).
CONSOLE_PREFIX = "/console/"
CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
}
UNAUTHORIZED = "Missing or invalid API key."
RATE_LIMITED = "Rate limit exceeded. Try again later."
MAX_ECHOED_INPUT = 200
MAX_ECHOED_CONTAINER = 2000

SETTINGS_KEY = web.AppKey("settings", Settings)
LIMITER_KEY: web.AppKey[FixedWindowLimiter] = web.AppKey("limiter")
METRICS_KEY = web.AppKey("metrics", ShimMetrics)
CORRELATION_ID_KEY = web.RequestKey("correlation_id", str)
# The authenticated tenant; ``None`` on the auth-exempt paths (/health, /openapi.json).
TENANT_KEY: web.RequestKey[str | None] = web.RequestKey("tenant")


class RequestValidationFailed(Exception):
    """A pydantic validation failure of one request part (``body``, ``query`` or ``path``)."""

    def __init__(self, where: str, error: ValidationError | list[dict[str, Any]]) -> None:
        super().__init__(str(error))
        self.where = where
        self.error = error

    def detail(self) -> list[dict[str, Any]]:
        if isinstance(self.error, ValidationError):
            try:
                items: list[dict[str, Any]] = json.loads(self.error.json(include_url=False))
            except ValueError:  # an input that cannot be echoed as JSON: leave the inputs out
                items = json.loads(self.error.json(include_url=False, include_input=False))
        else:
            items = [dict(item) for item in self.error]
        for item in items:
            item["loc"] = [self.where, *item.get("loc", [])]
            if isinstance(item.get("input"), str) and len(item["input"]) > MAX_ECHOED_INPUT:
                item["input"] = item["input"][:MAX_ECHOED_INPUT] + "..."  # never echo 2 MiB back
            if "input" in item and not _echoable(item["input"]):
                del item["input"]
        return items


def _echoable(value: Any) -> bool:
    """Small and strict JSON: NaN/Infinity would make the error body invalid JSON, and a 1 MB
    ``input_data`` has no place in an error message."""
    try:
        return len(json.dumps(value, allow_nan=False)) <= MAX_ECHOED_CONTAINER
    except ValueError:
        return False


class FixedWindowLimiter:
    """``limit`` requests per ``window`` seconds per identity; pure apart from the injected clock."""

    def __init__(self, limit: int, window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, tuple[int, int]] = {}  # identity -> (window index, count)

    def hit(self, identity: str) -> float | None:
        """Count one request; ``None`` if allowed, else the seconds until the window resets."""
        now = self.clock()
        index = int(now // self.window)
        if len(self._windows) > 10_000:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == index}
        current, count = self._windows.get(identity, (index, 0))
        if current != index:
            count = 0
        if count >= self.limit:
            return (index + 1) * self.window - now
        self._windows[identity] = (index, count + 1)
        return None


def json_error(
    status: int, detail: Any, correlation_id: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"detail": detail, "correlation_id": correlation_id}, status=status, headers=headers
    )


def _correlation_id(request: web.Request) -> str:
    inbound = request.headers.get(CORRELATION_HEADER, "")
    return inbound if _CORRELATION_RE.match(inbound) else str(uuid.uuid4())


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    correlation_id = _correlation_id(request)
    request[CORRELATION_ID_KEY] = correlation_id
    started = time.monotonic()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except StorageUnavailable as exc:  # locked database / full disk: the server's state, not the request
        log.warning("storage unavailable: %s (correlation id %s)", exc.cause or exc.detail, correlation_id)
        response = json_error(exc.status, exc.detail, correlation_id, exc.headers)
    except ShimError as exc:
        response = json_error(exc.status, exc.detail, correlation_id, exc.headers)
    except RequestValidationFailed as exc:
        response = json_error(422, exc.detail(), correlation_id)
    except web.HTTPRequestEntityTooLarge:
        cap = request.app[SETTINGS_KEY].api_max_payload_bytes
        response = json_error(413, f"Payload too large. Maximum allowed size is {cap} bytes.", correlation_id)
    except web.HTTPException as exc:  # aiohttp's own: unknown route (404), wrong method (405), ...
        if exc.status < 400:
            raise
        response = json_error(
            exc.status, exc.reason, correlation_id, {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        )
    except Exception:
        log.exception("unhandled error (correlation id %s)", correlation_id)
        response = json_error(500, "Internal server error", correlation_id)
    response.headers[CORRELATION_HEADER] = correlation_id
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "tako-vm"  # no framework or version banner
    elapsed = time.monotonic() - started
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None:
        metrics.request(route_template(request), request.method, response.status, elapsed)
    access_log.info(
        "%s %s %d %.1fms tenant=%s correlation_id=%s",
        request.method,
        request.path,
        response.status,
        elapsed * 1000,
        request.get(TENANT_KEY),
        correlation_id,
    )
    return response


def route_template(request: web.Request) -> str | None:
    """The matched route's template (``/jobs/{job_id}``), never the raw path; None when nothing matched."""
    match_info = request.match_info
    resource = match_info.route.resource if match_info.http_exception is None else None
    return resource.canonical if resource is not None else None


@web.middleware
async def payload_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
    cap = request.app[SETTINGS_KEY].api_max_payload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"Payload too large. Maximum allowed size is {cap} bytes.")
    return await handler(request)


def presented_key(request: web.Request, header: str) -> str | None:
    key = request.headers.get(header)
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def tenant_for(settings: Settings, key: str | None) -> str | None:
    """Constant-time lookup of the tenant a key belongs to; ``None`` if the key is unknown."""
    if key is None:
        return None
    found = None
    presented = key.encode("utf-8", "surrogatepass")
    for candidate, tenant in settings.api_keys.items():
        if hmac.compare_digest(presented, candidate.encode()):
            found = tenant
    return found


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    if not settings.api_rate_limit_enabled or request.path in EXEMPT_PATHS:
        return await handler(request)
    key = presented_key(request, settings.api_auth_header) if settings.api_auth_enabled else None
    tenant = tenant_for(settings, key)
    identity = f"key:{hash(key)}" if tenant is not None else f"ip:{request.remote}"
    retry_after = request.app[LIMITER_KEY].hit(identity)
    if retry_after is not None:
        raise RateLimited(RATE_LIMITED, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
    return await handler(request)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    if not settings.api_auth_enabled:
        request[TENANT_KEY] = DEFAULT_TENANT
        return await handler(request)
    if request.path in EXEMPT_PATHS or request.path.startswith(CONSOLE_PREFIX):
        request[TENANT_KEY] = None  # no tenant: the API handlers refuse; the console resolves its cookie
        return await handler(request)
    tenant = tenant_for(settings, presented_key(request, settings.api_auth_header))
    if tenant is None:
        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    request[TENANT_KEY] = tenant
    return await handler(request)
