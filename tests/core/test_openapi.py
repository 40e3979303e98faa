"""The OpenAPI document of the proxy's own endpoints: valid, served, and never out of date.

Every route the app registers is in the document (and nothing else is), so that a new route
cannot be added without describing it. The forwarded upstream API is not the proxy's own: the
catch-all ``/v1/{tail}``, ``/v1/models`` (merged from the upstreams' lists) and the stored
responses' routes (passed to the upstream that made them) stay out.
"""

from __future__ import annotations

import copy

import pytest
import schemathesis
from aiohttp import web

from proxy.app import create_app
from proxy.config import parse_settings
from proxy.handlers.openapi import openapi_document
from proxy.middlewares import OWN_V1_PATHS
from tests.conftest import ProxyFactory
from tests.support import http

#: Routes of the forwarded API, not described by the proxy's document.
FORWARDED = {
    "/v1/{tail}",
    "/v1/models",
    "/v1/models/{model}",
    "/v1/responses/{response_id}",
    "/v1/responses/{response_id}/{rest}",
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def registered(app: web.Application) -> set[tuple[str, str]]:
    """``(method, path)`` of every route of ``app`` but the forwarded ones; the HEAD that
    aiohttp adds beside a GET goes with its GET, and the 405 for any other method
    (``refuse_other_methods``) with the methods it refuses."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path in FORWARDED or route.method == "HEAD":
            continue
        if route.method == "*" and path.startswith(OWN_V1_PATHS):
            continue
        routes.add((route.method.lower(), path))
    return routes


def documented(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def test_the_document_is_a_valid_openapi_document() -> None:
    doc = copy.deepcopy(openapi_document())
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "auth": {"mode": "keys", "keys": [{"name": "a", "key": "sk-x"}]},
            "redis": {"url": "redis://x"},
        },
    ],
    ids=["defaults", "keys-and-redis"],
)
def test_every_route_of_the_app_is_documented_and_no_other(config: dict[str, object]) -> None:
    app = create_app(parse_settings(config, env={}))
    assert registered(app) == documented(openapi_document())


def test_features_switched_off_leave_their_routes_out() -> None:
    """With batches passed through and jobs off, the routes left are all in the document (the
    document describes the proxy with every feature on)."""
    settings = parse_settings({"batches": {"mode": "passthrough"}}, env={})
    app = create_app(settings)
    routes = registered(app)
    assert routes < documented(openapi_document())
    assert not any(path.startswith(("/v1/files", "/v1/batches")) for _, path in routes)


def test_openapi_json_is_served_without_a_key(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"auth": {"mode": "keys", "keys": [{"name": "a", "key": "sk-known"}]}})
    got = http.get(f"{proxy.url}/openapi.json")
    assert got.status == 200
    assert got.headers["content-type"].startswith("application/json")
    assert got.json() == openapi_document()
    # A /v1/ route next to it still needs the key: /openapi.json is public, nothing else is.
    assert http.get(f"{proxy.url}/v1/jobs").status == 401
