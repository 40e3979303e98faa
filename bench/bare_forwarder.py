"""The yardstick: a bare aiohttp forwarder (no routing, auth, cache, errors), as the issue puts it.

``python -m bench.bare_forwarder --config FILE --host H --port P`` takes the same arguments as the
proxy, so ``bench.run --proxy-module bench.bare_forwarder`` measures it in the proxy's place.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import yaml
from aiohttp import web

from bench._aio import loop_factory

DROP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


def make_app(base_url: str) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await app["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        url = base_url + request.path[3:]
        async with request.app["s"].request(
            request.method, url, data=await request.read(), headers=headers
        ) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in DROP}
            if up.content_type == "text/event-stream":
                resp = web.StreamResponse(status=up.status, headers=out)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            return web.Response(status=up.status, headers=out, body=await up.read())

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with open(args.config) as f:
        base_url = yaml.safe_load(f)["upstreams"][0]["base_url"].rstrip("/")
    web.run_app(
        make_app(base_url),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory(),
    )


if __name__ == "__main__":
    main()
