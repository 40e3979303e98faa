"""The claim loop shared by the job worker and the batch runner.

A :class:`Dispatcher` claims work from its store (each subclass's ``_dispatch_once``) and runs
each claimed item as a task of its own, until stopped. ``wake`` makes it look again at once
(something was submitted, a slot was freed); cancelling ``run`` cancels every running task,
whose own cleanup hands the item back to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["Dispatcher"]


class Dispatcher:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def stop(self) -> None:
        """Leave the dispatch loop at its next turn (and wake it for that turn)."""
        self._stopping = True
        self._changed.set()

    def wake(self) -> None:
        """Something changed (work submitted here, a slot freed): look at the store now."""
        self._changed.set()

    async def run(self) -> None:
        """Claim and run until stopped; cancelling it cancels (hands back) what runs."""
        try:
            while not self._stopping:
                await self._dispatch_once()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dispatch_once(self) -> None:
        raise NotImplementedError

    def _start(self, work: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run one claimed item; its slot is free (and the loop woken) when it ends."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._changed.set()

    async def _wait_for_change(self, timeout_s: float) -> None:
        """Until woken, or ``timeout_s`` (the poll interval, or when the next item is due)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
