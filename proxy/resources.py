"""What outlives one generation of settings: metrics, the draining flag, reusable resources.

A live reload (SIGHUP) builds a new app from the new settings while the old one finishes its
requests (see :mod:`proxy.runtime`). Both hold the same :class:`Shared`: counters keep counting,
``/readyz`` of either says "draining" once a stop began, and a resource whose settings did not
change (an upstream's connection pool, the memory cache and its entries, the memory job store and
its jobs) is handed to the new app instead of being closed and opened again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .metrics import Metrics

__all__ = ["Resources", "Shared"]

T = TypeVar("T")


class Resources:
    """Reference-counted resources by key: the first user opens one, the last one closes it.

    The key must say everything the resource was built from (its settings), so that a change of
    settings gives a new resource and an unchanged one is reused.
    """

    def __init__(self) -> None:
        self._held: dict[Hashable, list[Any]] = {}  # key -> [resource, users, close]
        self._kept: dict[Hashable, Any] = {}

    @asynccontextmanager
    async def use(
        self,
        key: Hashable,
        open_: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> AsyncIterator[T]:
        """The resource under ``key`` (opened by ``open_`` if nobody holds it) while inside."""
        entry = self._held.get(key)
        if entry is None:
            entry = self._held[key] = [open_(), 0, close]
        entry[1] += 1
        try:
            yield entry[0]
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[key]
                if entry[2] is not None:
                    await entry[2](entry[0])

    def keep(self, key: Hashable, open_: Callable[[], T]) -> T:
        """The resource under ``key``, opened on first use and kept for the life of the process
        (for one that holds the only copy of its data and needs no closing, like the memory job
        store)."""
        if key not in self._kept:
            self._kept[key] = open_()
        return self._kept[key]  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._held)


@dataclass(frozen=True, eq=False)
class Shared:
    """Handed to every app built by one process (``create_app(settings, shared=...)``)."""

    metrics: Metrics = field(default_factory=Metrics)
    resources: Resources = field(default_factory=Resources)
    #: Set when a graceful stop begins: ``/readyz`` answers 503 from then on.
    draining: asyncio.Event = field(default_factory=asyncio.Event)
