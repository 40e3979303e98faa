"""schemathesis against a live proxy, from the proxy's own OpenAPI document.

Every operation of ``proxy/openapi.yaml`` gets generated requests, valid and invalid ones, with
a client key (or an admin key on admin routes), against a proxy in ``auth.mode: keys`` in front
of the fake upstream, with memory stores. Each answer must be no 5xx, a documented status with a
documented content type and headers, and a body that matches the document's schema; an invalid
request must be refused with a 4xx; and a request that succeeds with its key must fail without
it, or with a wrong one (``ignored_auth``).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.handlers.openapi import openapi_document
from tests.conftest import Proxy, ProxyFactory

CLIENT_KEY = "sk-schemathesis-client-0123456789"
ADMIN_KEY = "sk-schemathesis-admin-0123456789"
#: Examples per operation: with ~25 operations the run stays well under a minute.
EXAMPLES = 40
#: Operations that need an admin key (auth.admin_keys).
ADMIN_OPERATIONS = {"DELETE /v1/cache", "GET /stats", "GET /dashboard"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

schema = schemathesis.openapi.from_dict(copy.deepcopy(openapi_document()))


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    """Requests sent per operation, over the module; reported at its end."""
    counts: Counter[str] = Counter()
    yield counts
    print(f"\nschemathesis: {sum(counts.values())} requests")
    for name, count in sorted(counts.items()):
        print(f"  {name}: {count}")


@pytest.fixture
def live(make_proxy: ProxyFactory) -> Proxy:
    return make_proxy(
        {
            "auth": {
                "mode": "keys",
                "keys": [{"name": "client", "key": CLIENT_KEY}],
                "admin_keys": [{"name": "admin", "key": ADMIN_KEY}],
            },
        }
    )


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same inputs every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)
def test_the_proxy_answers_as_its_document_says(
    case: schemathesis.Case, live: Proxy, tally: Counter[str]
) -> None:
    admin = case.operation.label in ADMIN_OPERATIONS
    key = ADMIN_KEY if admin else CLIENT_KEY
    response = case.call_and_validate(
        base_url=live.url, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=10
    )
    tally[f"{case.method} {case.path} {response.status_code}"] += 1
