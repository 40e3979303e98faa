"""Per-request counts gathered over one event-loop turn, added to the metrics together."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = ["Tally"]


class Tally:
    """Counter increments and histogram observations, held until :meth:`fold`.

    prometheus-client takes a lock for every increment, and a histogram observation is two of
    them plus a scan of the buckets: five or more per request. Folded per loop turn, a turn's
    requests with the same labels cost one increment per counter and per histogram bucket hit.
    """

    __slots__ = ("_counts", "_observed")

    def __init__(self) -> None:
        self._counts: dict[Any, int] = {}
        self._observed: dict[Any, list[float]] = {}

    def inc(self, child: Any) -> None:
        self._counts[child] = self._counts.get(child, 0) + 1

    def observe(self, child: Any, value: float) -> None:
        values = self._observed.get(child)
        if values is None:
            self._observed[child] = [value]
        else:
            values.append(value)

    def fold(self) -> None:
        """Add what was gathered to the metrics."""
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, n in counts.items():
            child.inc(n)
        for child, values in observed.items():
            observe_all(child, values)


def observe_all(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for every value, with one increment per bucket hit and one of the
    sum. Uses the histogram's own buckets (``_upper_bounds``, ``_buckets``, ``_sum``, stable in
    prometheus-client for years); without them, observes one by one."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    hits: dict[int, int] = {}
    for value in values:
        # A bucket counts the values at or below its bound (as Histogram.observe does).
        index = bisect_left(bounds, value)
        hits[index] = hits.get(index, 0) + 1
    for index, n in hits.items():
        buckets[index].inc(n)
    total.inc(sum(values))
