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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .config import RedisSettings
from .errors import StoreUnavailable

__all__ = ["open_redis", "raise_if_cancelled", "reconnect_once", "store_op", "tls_options"]

T = TypeVar("T")


def reconnect_once() -> Retry:
    """One immediate retry, on a new connection, of a command whose connection broke.

    A pooled connection outlives the server it was opened to: after a Redis restart each one
    fails its next command ("Connection closed by server"), which without this reached clients
    as 503s (and opened the cache's breaker) after Redis was back. While Redis is down, the
    retry's connect is refused at once. Timeouts are not retried: the command may have run.
    """
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def open_redis(
    settings: RedisSettings,
    *,
    max_connections: int,
    pool_timeout_s: float,
    **options: Any,
) -> Any:
    """A client for ``settings.url``; ``options`` go to the connections (timeouts, retry).

    Single node: a blocking pool, so a burst waits up to ``pool_timeout_s`` for a connection
    instead of failing with "too many connections". Unless ``options`` say otherwise, a command
    whose connection broke is retried once on a new one (:func:`reconnect_once`); a Cluster
    client keeps its own retries (it also follows failovers with them).
    """
    assert settings.url is not None
    options.update(tls_options(settings))
    if settings.cluster:
        return RedisCluster.from_url(settings.url, max_connections=max_connections, **options)
    options.setdefault("retry", reconnect_once())
    pool = BlockingConnectionPool.from_url(
        settings.url, max_connections=max_connections, timeout=pool_timeout_s, **options
    )
    return Redis.from_pool(pool)


def tls_options(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's ``ssl_*`` options for a ``rediss://`` url (none for ``redis://``, whose plain
    connections take no such options). A password or ACL user travels in the url itself."""
    if not settings.url or not settings.url.lower().startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required" if settings.tls_verify else "none"}
    if not settings.tls_verify:
        options["ssl_check_hostname"] = False
    if settings.tls_ca_file:
        options["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file:
        options["ssl_certfile"] = settings.tls_cert_file
    if settings.tls_key_file:
        options["ssl_keyfile"] = settings.tls_key_file
    return options


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
