"""``create_app(settings)``: cleanup contexts, middlewares and routes. No I/O at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from .auth import Authenticator
from .batches import add_batch_routes, batches_ctx
from .cache import add_cache_routes, cache_ctx
from .call import Call, Next, Reply
from .coalesce import coalesce_ctx
from .config import Settings, UpstreamSettings
from .handlers.health import healthz, metrics_handler, readyz
from .handlers.models import model_handler, models_ctx, models_handler
from .handlers.openapi import add_openapi_route
from .handlers.proxy import ProxyDoor, proxy_handler
from .http1 import Pool
from .jobs import add_job_routes, jobs_ctx
from .keys import (
    AUTH,
    BATCHER,
    CACHE,
    DOOR,
    DRAINING,
    METRICS,
    OBSERVER,
    ORIGINS,
    PIPELINE,
    READINESS,
    REDIS,
    RESOURCES,
    ROUTER,
    SETTINGS,
    SINGLEFLIGHT,
)
from .middlewares import (
    answer_expect_in_openai_shape,
    auth_middleware,
    error_middleware,
    refuse_other_methods,
)
from .observe.middleware import Recent, build_observer
from .observe.routes import add_observe_routes
from .readiness import Readiness, redis_ping
from .redis_client import open_redis
from .resources import Shared
from .responses import add_response_routes, responses_ctx
from .upstream import Router, Upstream

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# The shared Redis client (cross-replica coalescing) serves many requests at once: a pool for a
# burst of them, where a request waits a bounded time for a connection instead of failing.
REDIS_MAX_CONNECTIONS = 512
REDIS_POOL_TIMEOUT_S = 2.0
#: A Redis that takes longer to accept a connection counts as down.
REDIS_CONNECT_TIMEOUT_S = 1.0


async def upstream_stage(call: Call) -> Reply:
    """The last stage: send the call to its upstream."""
    return await call.upstream.send(call)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].redis
    if not settings.url:
        app[REDIS] = None
        yield
        return

    def open_client() -> Any:
        return open_redis(
            settings,
            max_connections=REDIS_MAX_CONNECTIONS,
            pool_timeout_s=REDIS_POOL_TIMEOUT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        )

    async def close_client(client: Any) -> None:
        await client.aclose()

    # A reload with the same redis settings keeps the client (and its open connections).
    key = ("redis", settings.model_dump_json())
    async with app[RESOURCES].use(key, open_client, close_client) as client:
        app[REDIS] = client
        problem = "redis unreachable: coalescing within this replica only"
        app[READINESS].add_check("redis", redis_ping(client, problem))
        yield


def _open_session(up: UpstreamSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=up.max_connections, limit_per_host=up.max_connections, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _close_session(session: aiohttp.ClientSession) -> None:
    await session.close()


def _open_pool(up: UpstreamSettings) -> Pool:
    return Pool(
        up.base_url,
        limit=up.max_connections,
        connect_timeout_s=up.connect_timeout_s,
        read_timeout_s=up.first_byte_timeout_s,
        total_timeout_s=up.total_timeout_s,
    )


async def _close_pool(pool: Pool) -> None:
    await pool.close()


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    """Per upstream, a pool of kept-alive connections (:mod:`proxy.http1`) and an aiohttp
    session (streamed uploads, ``HEAD``), for the life of the app and across a reload that
    leaves the upstream's address, pool size and timeouts as they were."""
    settings = app[SETTINGS]
    upstreams = []
    async with AsyncExitStack() as stack:
        for up in settings.upstreams:
            key = ("upstream", up.name, up.base_url, up.max_connections)
            session = await stack.enter_async_context(
                app[RESOURCES].use(key, partial(_open_session, up), _close_session)
            )
            timeouts = (up.connect_timeout_s, up.first_byte_timeout_s, up.total_timeout_s)
            pool = await stack.enter_async_context(
                app[RESOURCES].use((*key, "pool", timeouts), partial(_open_pool, up), _close_pool)
            )
            upstream = Upstream(up, session, pool=pool, errors=app[METRICS].upstream_errors)
            upstreams.append(upstream)
        app[ROUTER] = Router(settings, upstreams)
        yield


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """Compose the stages: cache -> origins -> singleflight -> batcher -> upstream; build the
    HTTP door."""
    pipeline: Next = upstream_stage
    for key in (BATCHER, SINGLEFLIGHT, ORIGINS, CACHE):
        stage = app[key]
        if stage is not None:
            pipeline = stage.wrap(pipeline)
    pipeline = app[OBSERVER].wrap(pipeline)
    app[PIPELINE] = pipeline
    server = app[SETTINGS].server
    app[DOOR] = ProxyDoor(
        router=app[ROUTER],
        pipeline=pipeline,
        max_body_bytes=server.max_body_bytes,
        body_read_timeout_s=server.body_read_timeout_s,
        limits=app[SETTINGS].limits,
    )
    yield


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """Ready (and healing watched breakers) from here; not ready again from the first cleanup."""
    readiness = app[READINESS]
    await readiness.start()
    try:
        yield
    finally:
        await readiness.stop()


def create_app(settings: Settings, *, shared: Shared | None = None) -> web.Application:
    """Build the proxy application; every resource opens in a cleanup context.

    ``shared``: what this app has in common with the other apps of the process (a live reload
    builds a new app beside the old one); by default its own.
    """
    shared = Shared() if shared is None else shared
    auth = Authenticator.for_settings(settings)
    metrics = shared.metrics
    observer = build_observer(
        settings, metrics, recent=shared.resources.keep("observe-recent", Recent)
    )
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[observer.middleware(), error_middleware, auth_middleware(auth)],
    )
    app.on_response_prepare.append(observer.on_prepare)
    app[SETTINGS] = settings
    app[AUTH] = auth
    app[METRICS] = metrics
    app[OBSERVER] = observer
    app[RESOURCES] = shared.resources
    app[DRAINING] = shared.draining
    app[READINESS] = Readiness(
        requires_redis=settings.server.ready_requires_redis,
        gauge=metrics.degraded,
        draining=shared.draining,
    )
    # Order matters: each context may use what the ones before it opened.
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(upstreams_ctx)
    app.cleanup_ctx.append(models_ctx)
    app.cleanup_ctx.append(cache_ctx)
    app.cleanup_ctx.append(coalesce_ctx)
    app.cleanup_ctx.append(responses_ctx)
    app.cleanup_ctx.append(pipeline_ctx)
    app.cleanup_ctx.append(jobs_ctx)
    app.cleanup_ctx.append(batches_ctx)
    app.cleanup_ctx.append(readiness_ctx)  # last: ready once everything else has started

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    add_openapi_route(app)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_get("/v1/models/{model:.+}", model_handler)
    add_cache_routes(app)
    add_job_routes(app)
    add_response_routes(app)
    add_observe_routes(app)
    add_batch_routes(app, settings)
    refuse_other_methods(app)
    app.router.add_route("*", "/v1/{tail:.*}", proxy_handler)
    answer_expect_in_openai_shape(app)
    return app
