"""One readable line for every error the SDK raises, as the CLI prints it."""

from __future__ import annotations

import json
from typing import Any

from tako_vm.errors import APIConnectionError, APIError, TakoVMError, UnprocessableEntityError


def _location(loc: Any) -> str:
    parts = (
        [str(part) for part in loc if part not in ("body", "query", "path")] if isinstance(loc, list) else []
    )
    return ".".join(parts)


def validation_line(detail: str) -> str:
    """A 422 ``detail`` (a string, or pydantic's JSON list) as ``field: message; field: message``."""
    try:
        items = json.loads(detail)
    except (json.JSONDecodeError, TypeError):
        return detail
    if not isinstance(items, list):
        return detail
    shown = []
    for item in items:
        if not isinstance(item, dict):
            continue
        where = _location(item.get("loc"))
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        shown.append(f"{where}: {message}" if where else message)
    return "; ".join(shown) or detail


def error_line(exc: TakoVMError, url: str | None) -> str:
    """What `tako-vm` prints for ``exc`` (without the `tako-vm: ` prefix)."""
    if isinstance(exc, APIConnectionError):
        where = url or "the server"
        return (
            f"cannot reach the Tako VM server at {where} ({exc.message}); start one with `tako-vm server` "
            "(or `make server`), or point --url / TAKO_VM_URL at a running one"
        )
    if isinstance(exc, UnprocessableEntityError):
        return f"the server refused the request: {validation_line(exc.detail)}"
    if isinstance(exc, APIError):
        return f"the server answered {exc.status_code}: {exc.detail}"
    return str(exc)
