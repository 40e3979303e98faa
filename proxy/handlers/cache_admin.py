"""``DELETE /v1/cache``: empty the response cache, one tenant's part of it, or one entry.

Needs an admin key (``auth.admin_keys``). Query parameters, all optional:

- ``tenant``: a tenant id (``t_`` + 32 hex digits, ``anonymous``, or ``shared`` for the entries
  of ``cache.shared: true``), or ``self`` for the admin key's own part;
- ``key``: an ``X-Cache-Key`` value (within ``tenant`` if given).

The header ``X-Cache-Tenant-Key: <client API key>`` names a tenant by its API key instead. Answers
``{"deleted": n, "tenant": ..., "key": ...}``.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..cache.keys import SHARED_SCOPE
from ..errors import InvalidRequest, NotFound
from ..keys import AUTH, CACHE, IDENTITY
from ..middlewares import admin_route

__all__ = ["TENANT_KEY_HEADER", "clear_cache"]

TENANT_KEY_HEADER = "X-Cache-Tenant-Key"
_TENANT = re.compile(rf"t_[0-9a-f]{{32}}|anonymous|{SHARED_SCOPE}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _scope(request: web.Request) -> str | None:
    auth = request.app[AUTH]
    tenant_key = request.headers.get(TENANT_KEY_HEADER)
    tenant = request.query.get("tenant")
    if tenant_key is not None and tenant is not None:
        raise InvalidRequest(f"Send either ?tenant= or {TENANT_KEY_HEADER}, not both")
    if tenant_key is not None:
        return auth.identify({"Authorization": f"Bearer {tenant_key}"}).tenant
    if tenant == "self":
        return request[IDENTITY].tenant  # the admin key's own part
    if tenant is not None and not _TENANT.fullmatch(tenant):
        raise InvalidRequest(
            "'tenant' must be a tenant id (t_ and 32 hex digits), 'anonymous', 'shared' or 'self'",
            param="tenant",
        )
    return tenant


@admin_route
async def clear_cache(request: web.Request) -> web.Response:
    """Delete cache entries; admin only (in either auth mode)."""
    cache = request.app[CACHE]
    if cache is None:
        raise NotFound("The response cache is disabled (cache.enabled: false)")
    scope = _scope(request)
    digest = request.query.get("key")
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise InvalidRequest("'key' must be an X-Cache-Key value (64 hex digits)", param="key")
    deleted = await cache.backend.clear(scope=scope, digest=digest)
    return web.json_response({"deleted": deleted, "tenant": scope, "key": digest})
