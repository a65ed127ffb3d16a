"""Timers and background tasks that do not keep the kopf event that started them alive.

asyncio runs every callback and task in a copy of the context (`contextvars`) that was current when it
was scheduled. Inside a kopf handler that context holds kopf's per-event state (the cause with the watch
event's body, kopf's Body/Patch views, the handler's loggers), so a `loop.call_later` made while handling
an event keeps that whole event in memory for as long as the timer exists. A finished PythonJob's TTL
wake-up (hours) did so for every job, and a cancelled timer keeps its context until the event loop
drops it from its heap (lazily, possibly at its original due time): measured in docs/performance.md
("Sixth round"). The operator's own timers and tasks read no context variable, so they start from an
empty context instead. One new context per timer or task (a context cannot be entered twice at once).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def call_later(delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
    """`loop.call_later` on the running loop, run in an empty context."""
    return asyncio.get_running_loop().call_later(delay, callback, *args, context=contextvars.Context())


def spawn(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """`loop.create_task` on the running loop, run in an empty context."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
