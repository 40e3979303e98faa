"""The OpenAI Batch API for any upstream: ``/v1/files`` and ``/v1/batches``.

See ``docs/batches.md``. The parts: :mod:`.models` (file and batch records), :mod:`.store`
(the contracts) with :mod:`.memory` and :mod:`.redis`, :mod:`.files` (streamed uploads and
downloads), :mod:`.lines` (reading and checking JSONL), :mod:`.runner` (claim, validate, run,
write the output files) and :mod:`.service`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..config import Settings
from ..handlers import batches as handlers
from ..jobs import memory_rate_state
from ..jobs.limits import MemoryBuckets, RateLimiter, bucket_limits
from ..keys import BATCHES, DOOR, JOBS, PIPELINE, RESOURCES, SETTINGS
from ..redis_client import open_redis
from ..resources import Resources
from .files import FileService
from .memory import MemoryBatchStore, MemoryFileStore
from .redis import RedisBatchStore, RedisFileStore
from .runner import BatchRunner
from .service import BatchService
from .store import BatchStore, FileStore

__all__ = ["add_batch_routes", "batches_ctx"]

log = logging.getLogger(__name__)

_MAX_CONNECTIONS = 64


def _memory_stores() -> tuple[FileStore, BatchStore]:
    log.warning("files and batches are kept in memory: they do not survive a restart")
    return MemoryFileStore(), MemoryBatchStore()


def _stores(redis: Any, settings: Settings, resources: Resources) -> tuple[FileStore, BatchStore]:
    if redis is None:
        # The only copy of the files and batches: the process keeps it, and a live reload's new
        # app takes it over (as the memory job store).
        return resources.keep("batches-memory-stores", _memory_stores)
    prefix, timeout_s = settings.redis.key_prefix, settings.jobs.store_timeout_s
    return (
        RedisFileStore(redis, prefix=prefix, op_timeout_s=timeout_s),
        RedisBatchStore(redis, prefix=prefix, op_timeout_s=timeout_s),
    )


def _limiter(app: web.Application) -> RateLimiter:
    """The job workers' limiter, so that ``jobs.rate_limit`` holds for jobs and batches
    together; a memory one when jobs are off."""
    jobs = app[JOBS]
    if jobs is not None:
        limiter: RateLimiter = jobs.worker.limiter
        return limiter
    limits = bucket_limits(app[SETTINGS].jobs.rate_limit)
    return RateLimiter(MemoryBuckets(limits, tat=memory_rate_state(app[RESOURCES])), limits)


async def batches_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the file and batch stores (where the jobs are), starts the runner; sets
    ``app[BATCHES]`` (``None`` in passthrough mode, where the default upstream answers)."""
    settings = app[SETTINGS]
    if settings.batches.mode != "emulate":
        app[BATCHES] = None
        yield
        return
    redis = None
    if settings.jobs_on_redis:
        redis = open_redis(
            settings.redis,
            max_connections=_MAX_CONNECTIONS,
            pool_timeout_s=settings.jobs.store_timeout_s,
            socket_connect_timeout=1.0,
        )
    file_store, batch_store = _stores(redis, settings, app[RESOURCES])
    files = FileService(file_store, settings.files)
    runner = BatchRunner(
        store=batch_store,
        files=files,
        door=app[DOOR],
        pipeline=app[PIPELINE],
        settings=settings,
        limiter=_limiter(app),
    )
    app[BATCHES] = BatchService(store=batch_store, files=files, runner=runner, settings=settings)
    task = asyncio.create_task(runner.run(), name="batch-runner")

    async def halt(_app: web.Application | None = None) -> None:
        """Claim no more batches; running ones are handed back."""
        runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # A reload's old generation stops running batches at once (proxy.runtime): the new one
    # takes them over.
    app.on_shutdown.append(halt)
    try:
        yield
    finally:
        await halt()
        if redis is not None:
            await redis.aclose()


def add_batch_routes(app: web.Application, settings: Settings) -> None:
    """``/v1/files`` and ``/v1/batches``, unless passed through to the default upstream."""
    if settings.batches.mode == "emulate":
        handlers.add_routes(app)
