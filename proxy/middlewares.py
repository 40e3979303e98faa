"""Middlewares: OpenAI-shaped errors, and the caller's identity (auth -> tenant)."""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler, Middleware

from .auth import Authenticator, Identity
from .errors import PayloadTooLarge, ProxyError, error_body
from .keys import AUTH, IDENTITY

__all__ = [
    "admin_route",
    "answer_expect_in_openai_shape",
    "auth_middleware",
    "error_middleware",
    "is_admin_route",
    "json_error",
    "refuse_other_methods",
    "require_admin",
]

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


# /stats and /dashboard check the admin key themselves (proxy.observe.routes): a browser may
# send it as a Basic password, and passthrough mode leaves them open.
_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/stats", "/dashboard", "/openapi.json"})
_ADMIN_MARK = "_llm_proxy_admin_route"

H = TypeVar("H")


def admin_route(handler: H) -> H:
    """Mark a route's handler as an admin route: only keys from ``auth.admin_keys`` reach it,
    in either ``auth.mode``, and ``request[IDENTITY]`` is the admin's (never forwarded)."""
    setattr(handler, _ADMIN_MARK, True)
    return handler


def is_admin_route(request: web.Request) -> bool:
    return getattr(request.match_info.handler, _ADMIN_MARK, False) is True


def require_admin(request: web.Request) -> Identity:
    """The admin identity of ``request``: 401 without a key, 403 with a key that is not an
    admin key. For handlers that decide for themselves; :func:`admin_route` is the usual way."""
    return request.app[AUTH].admin(request.headers)


def auth_middleware(auth: Authenticator) -> Middleware:
    """Sets ``request[IDENTITY]``: an admin key on admin routes; elsewhere the client (in
    ``keys`` mode a missing or wrong key gets 401, in passthrough a keyless caller off loopback
    too unless ``auth.lend_upstream_key``)."""

    @web.middleware
    async def impl(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_admin_route(request):
            request[IDENTITY] = auth.admin(request.headers)
        elif request.path not in _PUBLIC:
            request[IDENTITY] = auth.identify(request.headers, peer=request.remote)
        return await handler(request)

    return impl


async def _expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` as aiohttp answers it; any other expectation is a 417 in the
    OpenAI shape. (aiohttp's own 417 echoes the value and failed with a 500 when it was not
    UTF-8; it runs before any middleware, so it is replaced per route.)"""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the main body has not started
        return None
    body = error_body(
        "Only 'Expect: 100-continue' is supported",
        type_="invalid_request_error",
        code="expectation_failed",
    )
    return web.json_response(body, status=417)


def answer_expect_in_openai_shape(app: web.Application) -> None:
    """Give every route of ``app`` the proxy's ``Expect`` handler (call once routes are added).

    aiohttp sets it only through ``add_route(expect_handler=...)``; setting it here once covers
    the routes every feature adds."""
    for route in app.router.routes():
        route._expect_handler = _expect_handler


#: The proxy's own paths under ``/v1/`` (the rest of ``/v1/`` is the upstream's API).
OWN_V1_PATHS = ("/v1/cache", "/v1/jobs", "/v1/files", "/v1/batches")


def _method_not_allowed(allowed: list[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return refuse


def refuse_other_methods(app: web.Application) -> None:
    """A method that one of the proxy's own ``/v1/`` routes does not serve is a 405 with
    ``Allow``, instead of falling through to the catch-all route and reaching the upstream
    (which, in ``auth.mode: keys``, would get the proxy's own key). Call once routes are added."""
    # One path may have several resources (aiohttp makes a new one when routes of other paths
    # were added in between): the 405 goes after the last, naming the methods of them all.
    last: dict[str, web.Resource] = {}
    methods: dict[str, set[str]] = {}
    for resource in app.router.resources():
        path = resource.canonical
        if any(path == own or path.startswith(own + "/") for own in OWN_V1_PATHS):
            last[path] = resource  # type: ignore[assignment]
            methods.setdefault(path, set()).update(route.method for route in resource)
    for path, resource in last.items():
        if "*" not in methods[path]:
            resource.add_route("*", _method_not_allowed(sorted(methods[path])))
