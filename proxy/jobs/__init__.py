"""Asynchronous jobs: accept now, forward later through the pipeline, never lose one."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..keys import JOBS

__all__ = ["add_job_routes", "jobs_ctx"]


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the job store, starts the workers, sets ``app[JOBS]`` (``None`` when off)."""
    app[JOBS] = None
    yield


def add_job_routes(app: web.Application) -> None:
    """``/v1/jobs`` routes."""
