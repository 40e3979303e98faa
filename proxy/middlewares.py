"""Middlewares: OpenAI-shaped errors, and the caller's identity (auth -> tenant)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .auth import Authenticator
from .errors import PayloadTooLarge, ProxyError, error_body
from .keys import IDENTITY

__all__ = ["auth_middleware", "error_middleware", "json_error"]

log = logging.getLogger(__name__)

_HTTP_TYPES = {404: "invalid_request_error", 405: "invalid_request_error"}


def json_error(exc: ProxyError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=exc.to_bytes(),
        content_type="application/json",
        headers=exc.headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything the proxy itself answers with an error is OpenAI-shaped; never a traceback."""
    try:
        return await handler(request)
    except ProxyError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return json_error(PayloadTooLarge("Request body is larger than server.max_body_bytes"))
        body = error_body(
            exc.reason, type_=_HTTP_TYPES.get(exc.status, "api_error"), code=str(exc.status)
        )
        allow = exc.headers.get("Allow")  # a 405 says what is allowed
        return web.json_response(
            body, status=exc.status, headers={"Allow": allow} if allow else None
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # the one outermost place: anything unexpected is a clean 500
        log.exception("unexpected error on %s %s", request.method, request.path)
        body = error_body(
            "The proxy failed to handle the request", type_="api_error", code="internal_error"
        )
        return web.json_response(body, status=500)


# Admin routes: /stats and /dashboard check the admin key themselves (proxy.observe.routes).
_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/stats", "/dashboard"})


def auth_middleware(auth: Authenticator) -> Middleware:
    """Sets ``request[IDENTITY]``; in ``keys`` mode a missing or wrong key gets 401."""

    @web.middleware
    async def impl(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _PUBLIC:
            request[IDENTITY] = auth.identify(request.headers)
        return await handler(request)

    return impl
