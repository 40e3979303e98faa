"""``GET /v1/models``: the union of every upstream's model list, each asked once, briefly cached."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from ..auth import Identity
from ..call import Call
from ..errors import UpstreamError
from ..keys import IDENTITY, ROUTER, SETTINGS
from ..upstream import Upstream, forward_headers
from .proxy import proxy_handler

__all__ = ["ModelList", "models_handler"]

log = logging.getLogger(__name__)


class ModelList:
    """Merged model lists per tenant (their credentials may see different models)."""

    def __init__(self, *, ttl_s: float, aliases: dict[str, str]) -> None:
        self.ttl_s = ttl_s
        self.aliases = aliases
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._lock = asyncio.Lock()

    async def get(self, upstreams: list[Upstream], identity: Identity, headers: Any) -> bytes:
        hit = self._fresh(identity.tenant)
        if hit is not None:
            return hit
        async with self._lock:  # one listing at a time; waiters reuse its answer
            hit = self._fresh(identity.tenant)
            if hit is not None:
                return hit
            results = await asyncio.gather(
                *(self._ask(u, identity, headers) for u in upstreams), return_exceptions=True
            )
        seen: set[str] = set()
        data: list[dict[str, Any]] = []
        failures = 0
        for upstream, result in zip(upstreams, results, strict=True):
            if isinstance(result, BaseException):
                failures += 1
                log.warning("listing models of upstream %r failed: %s", upstream.name, result)
                continue
            for model in result:
                if isinstance(model, dict) and model.get("id") not in seen:
                    seen.add(model["id"])
                    data.append(model)
        if failures == len(upstreams):
            raise UpstreamError("No upstream answered the model list")
        for alias in self.aliases:
            if alias not in seen:
                data.append({"id": alias, "object": "model", "created": 0, "owned_by": "llm-proxy"})
        body = orjson.dumps({"object": "list", "data": data})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[identity.tenant] = (time.monotonic(), body)
        return body

    def _fresh(self, tenant: str) -> bytes | None:
        hit = self._cache.get(tenant)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl_s else None

    async def _ask(self, upstream: Upstream, identity: Identity, headers: Any) -> list[Any]:
        call = Call(
            tenant=identity.tenant,
            upstream=upstream,
            method="GET",
            path="/v1/models",
            body=b"",
            headers=forward_headers(headers),
            credential=identity.credential,
        )
        reply = await upstream.send(call)
        if not reply.ok or reply.body is None:
            await reply.aclose()
            raise UpstreamError(f"upstream {upstream.name!r} answered {reply.status}")
        try:
            listed = orjson.loads(reply.body)["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError(f"upstream {upstream.name!r} sent a malformed model list") from exc
        if not isinstance(listed, list):
            raise UpstreamError(f"upstream {upstream.name!r} sent a malformed model list")
        return listed


MODEL_LIST = web.AppKey("model_list", ModelList)


async def models_handler(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    upstreams = list(router.upstreams.values())
    listing = request.app[MODEL_LIST]
    if len(upstreams) == 1 and not listing.aliases:
        # One upstream and nothing to add: exactly its answer, status and headers included.
        return await proxy_handler(request)
    body = await listing.get(upstreams, request[IDENTITY], request.headers)
    return web.Response(body=body, content_type="application/json")


def setup_models(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[MODEL_LIST] = ModelList(
        ttl_s=settings.routing.models_cache_s, aliases=dict(settings.routing.model_aliases)
    )
