"""The aiohttp application: assembles the middleware and the per-resource route modules.

``create_app(settings, backend)`` builds it; the backend is started in ``cleanup_ctx`` and ``/health``
answers 503 until it is ready. All errors become JSON at one place (``middleware.boundary``). The
handlers live with their resource: ``jobs``, ``executions``, ``job_types`` and ``ops`` (``/metrics`` with
``metrics_enabled``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from tako_shim.backends.base import Backend
from tako_shim.config import Settings
from tako_shim.http import events, executions, job_types, jobs, middleware, ops, sessions
from tako_shim.http.common import BACKEND_KEY, OPENAPI_KEY, READY_KEY
from tako_shim.http.console import add_console
from tako_shim.http.guards import browser_guard
from tako_shim.http.middleware import LIMITER_KEY, METRICS_KEY, SETTINGS_KEY, FixedWindowLimiter
from tako_shim.http.openapi import RouteSpec, build_openapi

ROUTES: list[RouteSpec] = [
    ops.HEALTH,
    *jobs.ROUTES,
    *events.ROUTES,
    *executions.ROUTES,
    *job_types.ROUTES,
    *ops.ROUTES,
    *sessions.ROUTES,
]


def create_app(settings: Settings, backend: Backend) -> web.Application:
    app = web.Application(
        client_max_size=settings.api_max_payload_bytes,
        middlewares=[
            middleware.boundary,
            browser_guard(settings),
            middleware.payload_cap,
            middleware.rate_limit,
            middleware.authenticate,
        ],
    )
    app[SETTINGS_KEY] = settings
    app[BACKEND_KEY] = backend
    app[READY_KEY] = {"ready": False}
    app[LIMITER_KEY] = FixedWindowLimiter(
        settings.api_rate_limit_requests, settings.api_rate_limit_window_seconds
    )
    app[METRICS_KEY] = backend.metrics
    routes = [*ROUTES, ops.METRICS] if settings.metrics_enabled else ROUTES
    app[OPENAPI_KEY] = build_openapi(routes)
    events.install(app)
    backend.metrics.streams_open = lambda: len(app[events.STREAMS_KEY].tasks)
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    if settings.console_on():
        add_console(app)  # /console/: server-rendered pages over the same backend (docs/console.md)

    async def backend_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await backend.start()
        app[READY_KEY]["ready"] = True
        yield
        app[READY_KEY]["ready"] = False
        await backend.close()

    app.cleanup_ctx.append(backend_lifecycle)
    return app
