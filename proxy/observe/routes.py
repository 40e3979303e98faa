"""``GET /stats`` (JSON) and ``GET /dashboard`` (one self-contained page that polls it).

With ``auth.mode: keys`` both need an admin key (``auth.admin_keys``): as a bearer token, or as
the password of HTTP Basic auth, which a browser asks for by itself (any user name).
"""

from __future__ import annotations

import base64
import binascii
from importlib import resources

import orjson
from aiohttp import web

from ..errors import AuthenticationFailed, PermissionDenied
from ..keys import AUTH, OBSERVER

__all__ = ["add_observe_routes"]

_BASIC = {"WWW-Authenticate": 'Basic realm="llm-proxy admin", charset="UTF-8"'}
_PAGE = resources.files(__package__).joinpath("dashboard.html").read_bytes()


def require_admin(request: web.Request) -> None:
    """The admin check of ``DELETE /v1/cache``, also accepting the key as a Basic password."""
    auth = request.app[AUTH]
    if auth.mode != "keys":
        return
    value = request.headers.get("Authorization", "")
    if value[:6].lower() != "basic ":
        try:
            auth.require_admin(request.headers)
        except AuthenticationFailed as exc:
            exc.headers.update(_BASIC)
            raise
        return
    try:
        password = base64.b64decode(value[6:].strip(), validate=True).decode().partition(":")[2]
    except (binascii.Error, UnicodeDecodeError):
        password = ""
    try:
        auth.require_admin({"Authorization": f"Bearer {password}"} if password else {})
    except (AuthenticationFailed, PermissionDenied):
        # 401 either way: a browser then asks again instead of showing a dead end.
        raise AuthenticationFailed("This page needs an admin key", headers=_BASIC) from None


async def stats_handler(request: web.Request) -> web.Response:
    require_admin(request)
    doc = await request.app[OBSERVER].stats.document(request.app)
    return web.Response(
        body=orjson.dumps(doc),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def dashboard_handler(request: web.Request) -> web.Response:
    require_admin(request)
    return web.Response(
        body=_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            # Everything is inline; nothing may be loaded from elsewhere.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        },
    )


def add_observe_routes(app: web.Application) -> None:
    app.router.add_get("/stats", stats_handler)
    app.router.add_get("/dashboard", dashboard_handler)
