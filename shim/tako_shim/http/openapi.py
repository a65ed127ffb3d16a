"""The OpenAPI 3.1 document, generated from the route table and the pydantic wire models."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tako_vm import __version__
from tako_vm.models.wire import ErrorResponse, ValidationErrorResponse

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_is_list: bool = False
    query: type[BaseModel] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    raw_response: str | None = None  # a non-JSON media type (artifacts)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "title": name}}
        for name in re.findall(r"{(\w+)}", path)
    ]


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        entry: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            entry["description"] = prop["description"]
        params.append(entry)
    return params


def _operation_id(route: RouteSpec) -> str:
    return f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_')}"


def build_openapi(routes: list[RouteSpec]) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorResponse, ValidationErrorResponse}
    for route in routes:
        models.update(m for m in (route.body, route.response) if m is not None)
    keyed = sorted(models, key=lambda m: m.__name__)
    _, defs = models_json_schema([(m, "validation") for m in keyed], ref_template=REF)
    components = defs.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": REF.format(model=model.__name__)}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
        }
        params = _path_parameters(route.path) + (_query_parameters(route.query) if route.query else [])
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.body)}},
            }
        if route.raw_response:
            ok: dict[str, Any] = {"description": "File content", "content": {route.raw_response: {}}}
        elif route.response is not None:
            schema: dict[str, Any] = ref(route.response)
            if route.response_is_list:
                schema = {"type": "array", "items": schema}
            ok = {"description": "Successful Response", "content": {"application/json": {"schema": schema}}}
        else:
            ok = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}
        responses: dict[str, Any] = {"200": ok}
        for status, description in sorted(route.errors.items()):
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": ref(ErrorResponse)}},
            }
        if route.body is not None or route.query is not None:
            responses["422"] = {
                "description": "Validation Error",
                "content": {"application/json": {"schema": ref(ValidationErrorResponse)}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
        operation["responses"] = responses
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tako VM on Kubernetes - Secure Code Executor API",
            "description": "Execute untrusted Python in gVisor sandboxes (Tako VM 0.3.0 compatible REST API)",
            "version": __version__,
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
