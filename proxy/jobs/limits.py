"""Per-upstream rate limits for job workers: requests and (estimated) tokens per minute.

GCRA (a leaky bucket kept as one "theoretical arrival time" per limit), with a burst of one
second's worth, so work is spread evenly instead of sent in a burst at the top of each minute.
With Redis the state is shared, so the limit holds for all replicas together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import RateLimit
from ..errors import StoreUnavailable
from ..redis_client import raise_if_cancelled
from .keys import JobKeys

__all__ = ["MemoryBuckets", "RateLimiter", "RedisBuckets", "estimate_tokens"]


def estimate_tokens(data: dict[str, Any], body: bytes) -> int:
    """A rough upper bound: 4 bytes of request per prompt token, plus the completion allowed."""
    completion = data.get("max_completion_tokens") or data.get("max_tokens") or 0
    n = data.get("n") if isinstance(data.get("n"), int) else 1
    completion = completion if isinstance(completion, int) else 0
    return len(body) // 4 + completion * max(1, n or 1)


class Buckets(Protocol):
    async def take(self, names: list[str], costs: list[float], now: float) -> float:
        """Take every cost at once, or none: ``0`` when taken, else seconds to wait."""
        ...


# A limit is (name, interval_s per unit, burst_s); cost c needs tat' = max(tat, now) + c*interval
# and tat' - now <= burst_s (burst_s >= c*interval, so one big request always fits eventually).


class MemoryBuckets:
    """``tat``: the state, by limit name; pass the process's own so that a live reload's new
    buckets go on from where the old ones were (as Redis's do)."""

    def __init__(
        self, limits: dict[str, tuple[float, float]], *, tat: dict[str, float] | None = None
    ) -> None:
        self._limits = limits  # name -> (interval_s, burst_s)
        self._tat: dict[str, float] = {} if tat is None else tat

    async def take(self, names: list[str], costs: list[float], now: float) -> float:
        wait = 0.0
        updates = {}
        for name, cost in zip(names, costs, strict=True):
            interval, burst = self._limits[name]
            tat = max(self._tat.get(name, now), now) + cost * interval
            wait = max(wait, tat - now - max(burst, cost * interval))
            updates[name] = tat
        if wait > 0:
            return wait
        self._tat.update(updates)
        return 0.0


_TAKE = """
local now = tonumber(ARGV[1])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 + (i - 1) * 3])
  local interval = tonumber(ARGV[3 + (i - 1) * 3])
  local burst = tonumber(ARGV[4 + (i - 1) * 3])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now) + cost * interval
  wait = math.max(wait, tat - now - math.max(burst, cost * interval))
  tats[i] = tat
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(tats[i]), 'PX', math.ceil((tats[i] - now) * 1000) + 1000)
end
return '0'
"""


class RedisBuckets:
    def __init__(self, redis: Redis, keys: JobKeys, limits: dict[str, tuple[float, float]]):
        self._limits = limits
        self._keys = keys
        self._take = redis.register_script(_TAKE)

    async def take(self, names: list[str], costs: list[float], now: float) -> float:
        argv: list[Any] = [repr(now)]
        for name, cost in zip(names, costs, strict=True):
            argv += [repr(cost), *map(repr, self._limits[name])]
        keys = [self._keys.rate(*name.rsplit("/", 1)) for name in names]
        try:
            async with asyncio.timeout(2.0):
                return float(await self._take(keys, argv))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable("rate limit state (Redis) is unavailable") from exc


def bucket_limits(limits: dict[str, RateLimit]) -> dict[str, tuple[float, float]]:
    """``upstream/requests`` and ``upstream/tokens`` -> (interval_s per unit, burst_s)."""
    out = {}
    for upstream, limit in limits.items():
        if limit.requests_per_minute:
            out[f"{upstream}/requests"] = (60.0 / limit.requests_per_minute, 1.0)
        if limit.tokens_per_minute:
            out[f"{upstream}/tokens"] = (60.0 / limit.tokens_per_minute, 1.0)
    return out


class RateLimiter:
    """Waits until an upstream may take one more request of ``tokens`` estimated tokens."""

    def __init__(self, buckets: Buckets, limits: dict[str, tuple[float, float]]) -> None:
        self._buckets = buckets
        self._limits = limits

    async def acquire(self, upstream: str, tokens: int) -> None:
        names, costs = [], []
        for kind, cost in (("requests", 1.0), ("tokens", float(tokens))):
            if f"{upstream}/{kind}" in self._limits:
                names.append(f"{upstream}/{kind}")
                costs.append(cost)
        if not names:
            return
        while True:
            try:
                wait = await self._buckets.take(names, costs, time.time())
            except StoreUnavailable:
                raise_if_cancelled()
                wait = 0.5  # no shared state: hold back rather than overrun the upstream
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 5.0))
