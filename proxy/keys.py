"""Typed keys for the objects the app shares between handlers (``app[KEY]``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .auth import Authenticator, Identity
    from .call import Next, Stage
    from .config import Settings
    from .handlers.models import ModelList
    from .handlers.proxy import ProxyDoor
    from .metrics import Metrics
    from .resources import Resources
    from .upstream import Router

__all__ = [
    "AUTH",
    "BATCHER",
    "CACHE",
    "DOOR",
    "DRAINING",
    "IDENTITY",
    "JOBS",
    "METRICS",
    "MODEL_LIST",
    "PIPELINE",
    "READINESS",
    "REDIS",
    "RESOURCES",
    "ROUTER",
    "SETTINGS",
    "SINGLEFLIGHT",
]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
ROUTER: web.AppKey[Router] = web.AppKey("router")
DOOR: web.AppKey[ProxyDoor] = web.AppKey("door")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: The merged ``GET /v1/models`` lists, per tenant.
MODEL_LIST: web.AppKey[ModelList] = web.AppKey("model_list")
#: ``redis.asyncio.Redis`` when ``redis.url`` is set, else ``None``.
REDIS: web.AppKey[Any] = web.AppKey("redis")
#: ``/readyz`` checks: name -> async callable returning an error text, or ``None`` when fine.
READINESS: web.AppKey[dict[str, Any]] = web.AppKey("readiness")

#: Pipeline stages, each ``None`` when switched off; composed by ``app.pipeline_ctx`` as
#: cache -> singleflight -> batcher -> upstream.
CACHE: web.AppKey[Any] = web.AppKey("cache")
SINGLEFLIGHT: web.AppKey[Stage | None] = web.AppKey("singleflight")
BATCHER: web.AppKey[Stage | None] = web.AppKey("batcher")
#: The composed pipeline: every door (HTTP, job worker, batch runner) calls this.
PIPELINE: web.AppKey[Next] = web.AppKey("pipeline")
#: The job service (``proxy.jobs``), ``None`` when jobs are off.
JOBS: web.AppKey[Any] = web.AppKey("jobs")

#: Set when a graceful stop begins (SIGTERM/SIGINT): ``/readyz`` answers 503 from then on.
DRAINING: web.AppKey[asyncio.Event] = web.AppKey("draining")
#: Resources that a live reload hands from the old app to the new one (``proxy.resources``).
RESOURCES: web.AppKey[Resources] = web.AppKey("resources")

#: Per-request: the caller's identity, set by the auth middleware.
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
