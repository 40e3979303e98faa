"""Event-loop helpers: use uvloop when it is installed, plain asyncio otherwise."""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is optional
    loop_factory = asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh (uv)loop."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)
