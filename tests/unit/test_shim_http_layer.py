"""The web layer fails closed: a handler reached without an authenticated tenant refuses before it
touches the backend (only /health and /openapi.json are exempt from authentication, and they never ask
for a tenant). This is the second line behind ``middleware.authenticate``."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tako_shim.errors import Unauthorized
from tako_shim.http.app import ROUTES
from tako_shim.http.common import BACKEND_KEY
from tako_shim.http.middleware import EXEMPT_PATHS, TENANT_KEY


class TouchedBackend:
    """Any attribute access is a failure: the handler must refuse before using the backend."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the handler used the backend ({name}) without a tenant")


GUARDED = [route for route in ROUTES if route.path not in EXEMPT_PATHS]


def test_every_route_but_health_and_openapi_is_guarded() -> None:
    assert {r.path for r in ROUTES} - {r.path for r in GUARDED} == {"/health", "/openapi.json"}
    assert len(GUARDED) == len(ROUTES) - 2


@pytest.mark.parametrize("route", GUARDED, ids=[f"{r.method} {r.path}" for r in GUARDED])
async def test_a_handler_without_a_tenant_refuses_before_the_backend(route: Any) -> None:
    app = web.Application()
    app[BACKEND_KEY] = TouchedBackend()  # type: ignore[assignment]
    match_info = {"job_id": "j", "execution_id": "j", "artifact_name": "a.txt", "name": "default"}
    request = make_mocked_request(route.method, route.path, app=app, match_info=match_info)
    request[TENANT_KEY] = None
    with pytest.raises(Unauthorized) as refused:
        await route.handler(request)
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}
