"""Turn an operation's plan (`tako_vm._operations`) into a sync method, an async method or a
module-level function, keeping its name, docstring and signature (for `help()` and IDEs)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from tako_vm._core import Plan

P = ParamSpec("P")
T = TypeVar("T")


class SyncDriver(Protocol):
    def _drive(self, plan: Plan[T]) -> T: ...


class AsyncDriver(Protocol):
    def _drive(self, plan: Plan[T]) -> Awaitable[T]: ...


D = TypeVar("D", bound=SyncDriver)
A = TypeVar("A", bound=AsyncDriver)


def _like(wrapper: Callable[..., Any], op: Callable[..., Any], *, method: bool) -> None:
    """Give `wrapper` the name, docstring and signature of `op` (plus `self` for a method); the
    return annotation is the plan's value type (`Plan[str]` -> `str`)."""
    functools.update_wrapper(wrapper, op)
    signature = inspect.signature(op)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Plan[") and returns.endswith("]"):
        returns = returns[len("Plan[") : -1]
    parameters = list(signature.parameters.values())
    if method:
        parameters.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    wrapper.__signature__ = signature.replace(parameters=parameters, return_annotation=returns)  # type: ignore[attr-defined]


def sync_method(op: Callable[P, Plan[T]]) -> Callable[Concatenate[D, P], T]:
    """`Client.<op>`: run the plan on the client's blocking transport."""

    def method(self: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._drive(op(*args, **kwargs))

    _like(method, op, method=True)
    return method


def async_method(op: Callable[P, Plan[T]]) -> Callable[Concatenate[A, P], Coroutine[Any, Any, T]]:
    """`AsyncClient.<op>`: the same plan as a coroutine on the asyncio transport."""

    async def method(self: A, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._drive(op(*args, **kwargs))

    _like(method, op, method=True)
    return method


def default_function(op: Callable[P, Plan[T]], client: Callable[[], SyncDriver]) -> Callable[P, T]:
    """`tako_vm.<op>`: the plan on the default client that `client()` returns."""

    def function(*args: P.args, **kwargs: P.kwargs) -> T:
        return client()._drive(op(*args, **kwargs))

    _like(function, op, method=False)
    return function
