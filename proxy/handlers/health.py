"""``/healthz`` (alive), ``/readyz`` (can serve; degraded parts named: see ``proxy.readiness``)."""

from __future__ import annotations

from aiohttp import web

from ..keys import METRICS, READINESS
from ..observe.stats import refresh_gauges

__all__ = ["healthz", "metrics_handler", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    status, body = await request.app[READINESS].report()
    return web.json_response(body, status=status)


async def metrics_handler(request: web.Request) -> web.Response:
    await request.app[READINESS].degraded()  # the llm_proxy_degraded gauge as of this scrape
    await refresh_gauges(request.app)
    body = request.app[METRICS].export()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
