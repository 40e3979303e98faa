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
    from .observe.middleware import Observer
    from .readiness import Readiness
    from .resources import Resources
    from .responses import OriginStage
    from .upstream import Router

__all__ = [
    "AUTH",
    "BATCHER",
    "BATCHES",
    "CACHE",
    "DOOR",
    "DRAINING",
    "IDENTITY",
    "JOBS",
    "METRICS",
    "MODEL_LIST",
    "OBSERVER",
    "ORIGINS",
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
#: Request ids, the request log and the per-request metrics (``proxy.observe``).
OBSERVER: web.AppKey[Observer] = web.AppKey("observer")
#: The merged ``GET /v1/models`` lists, per tenant.
MODEL_LIST: web.AppKey[ModelList] = web.AppKey("model_list")
#: ``redis.asyncio.Redis`` when ``redis.url`` is set, else ``None``.
REDIS: web.AppKey[Any] = web.AppKey("redis")
#: ``/readyz``: the degraded-part checks, and the starting/draining state (``.drain()``).
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")

#: Pipeline stages, each ``None`` when switched off; composed by ``app.pipeline_ctx`` as
#: cache -> origins -> singleflight -> batcher -> upstream.
CACHE: web.AppKey[Any] = web.AppKey("cache")
SINGLEFLIGHT: web.AppKey[Stage | None] = web.AppKey("singleflight")
BATCHER: web.AppKey[Stage | None] = web.AppKey("batcher")
#: The composed pipeline: every door (HTTP, job worker, batch runner) calls this.
PIPELINE: web.AppKey[Next] = web.AppKey("pipeline")
#: Which upstream created each response id; a pipeline stage that notes them.
ORIGINS: web.AppKey[OriginStage] = web.AppKey("origins")
#: The job service (``proxy.jobs``), ``None`` when jobs are off.
JOBS: web.AppKey[Any] = web.AppKey("jobs")

#: The Batch API emulation (``proxy.batches``), ``None`` in ``batches.mode: passthrough``.
BATCHES: web.AppKey[Any] = web.AppKey("batches")
#: Set when a graceful stop begins (SIGTERM/SIGINT): ``/readyz`` answers 503 from then on.
DRAINING: web.AppKey[asyncio.Event] = web.AppKey("draining")
#: Resources that a live reload hands from the old app to the new one (``proxy.resources``).
RESOURCES: web.AppKey[Resources] = web.AppKey("resources")

#: Per-request: the caller's identity, set by the auth middleware.
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
