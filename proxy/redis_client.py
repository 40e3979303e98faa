"""Redis clients for ``redis.url``: the one place that knows single node versus Cluster.

Each feature opens its own client with its own bounds (the cache's reads must give up after
``redis.op_timeout_ms``; the job store may wait longer for a pool connection). With
``redis.cluster: true`` every client is a Redis Cluster client; the features keep the keys of
each multi-key command in one hash slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisError

from .config import RedisSettings
from .errors import StoreUnavailable

__all__ = ["open_redis", "raise_if_cancelled", "store_op"]

T = TypeVar("T")


def open_redis(
    settings: RedisSettings,
    *,
    max_connections: int,
    pool_timeout_s: float,
    **options: Any,
) -> Any:
    """A client for ``settings.url``; ``options`` go to the connections (timeouts, retry).

    Single node: a blocking pool, so a burst waits up to ``pool_timeout_s`` for a connection
    instead of failing with "too many connections".
    """
    assert settings.url is not None
    if settings.cluster:
        return RedisCluster.from_url(settings.url, max_connections=max_connections, **options)
    pool = BlockingConnectionPool.from_url(
        settings.url, max_connections=max_connections, timeout=pool_timeout_s, **options
    )
    return Redis.from_pool(pool)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that surfaced from inside a Redis call as a failure.

    Loops that outlive Redis failures by design (job dispatch, lease renewal, rate-limit waits,
    claim refreshes) call this in their failure branch, so that they never outlive a shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def store_op(
    aw: Awaitable[T], *, timeout_s: float, log: logging.Logger, store: str, unavailable: str
) -> T:
    """One bounded operation of a Redis-backed store (jobs, files and batches): a failure or a
    timeout is logged (``"<store> operation failed: ..."``) and raised as
    :class:`StoreUnavailable` with the client's message ``unavailable``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await aw
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("%s operation failed: %s: %s", store, type(exc).__name__, exc)
        raise StoreUnavailable(unavailable) from exc
