"""``/healthz`` (alive), ``/readyz`` (ready: config loaded, Redis reachable when configured)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..keys import DRAINING, METRICS, READINESS

__all__ = ["healthz", "metrics_handler", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[DRAINING].is_set():  # stopping: a load balancer sends nothing new here
        return web.json_response(
            {"status": "draining", "problems": {"server": "shutting down"}}, status=503
        )
    checks = request.app[READINESS]
    names = list(checks)
    results = await asyncio.gather(*(checks[n]() for n in names))
    problems = {n: r for n, r in zip(names, results, strict=True) if r is not None}
    status = 503 if problems else 200
    return web.json_response(
        {"status": "not ready" if problems else "ready", "problems": problems}, status=status
    )


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].export()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
