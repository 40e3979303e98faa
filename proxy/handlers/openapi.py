"""``GET /openapi.json``: the OpenAPI document of the proxy's own endpoints.

The document is ``proxy/openapi.yaml`` (YAML, so that it can carry comments), read and turned
into JSON once per process, when the first app is built: a broken file stops the start, not a
request.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import orjson
import yaml
from aiohttp import web

__all__ = ["OPENAPI_PATH", "add_openapi_route", "openapi_document"]

OPENAPI_PATH = "/openapi.json"


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document as loaded from the package (the same object on every call: do not change
    it)."""
    text = resources.files("proxy").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or "paths" not in doc:
        raise ValueError("proxy/openapi.yaml is not an OpenAPI document")
    return doc


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document())


def add_openapi_route(app: web.Application) -> None:
    """Serve the document at ``/openapi.json`` (public, like ``/healthz``)."""
    body = _document_bytes()

    async def openapi_handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, openapi_handler)
