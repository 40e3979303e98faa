"""schemathesis against a live proxy, from the proxy's own OpenAPI document.

Every operation of ``proxy/openapi.yaml`` gets generated requests, valid and invalid ones, with
a client key (or an admin key on admin routes), against a proxy in ``auth.mode: keys`` in front
of the fake upstream, with memory stores. Each answer must be no 5xx, a documented status with a
documented content type and headers, and a body that matches the document's schema; an invalid
request must be refused with a 4xx; and a request that succeeds with its key must fail without
it, or with a wrong one (``ignored_auth``); a method an operation does not have is a 405 with
the right ``Allow``. A stateful run follows the document's links through real jobs, files and
batches.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from proxy.handlers.openapi import openapi_document
from tests.conftest import Proxy, ProxyFactory

CLIENT_KEY = "sk-schemathesis-client-0123456789"
ADMIN_KEY = "sk-schemathesis-admin-0123456789"
#: Examples per operation: over the 22 operations the whole module takes about 15 s.
EXAMPLES = 40
#: Sequences of up to 8 calls in the stateful run.
STATEFUL_EXAMPLES = 60
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
    unsupported_method,
    allow_header_conformance,
]

schema = schemathesis.openapi.from_dict(copy.deepcopy(openapi_document()))
schema.config.generation.update(
    # The test sends the keys itself; ignored_auth tries each operation without a key and with
    # a wrong one.
    with_security_parameters=False,
    # The proxy ignores query parameters it does not know (as OpenAI does), which schemathesis
    # would count as accepting invalid input; odd extra headers are tests/hostile/test_fuzz.py's.
    allow_extra_parameters=False,
)
# Only the document's own links: schemathesis would also infer some, from answers whose status
# depends on timing (deleting a job that may not have finished yet), and Hypothesis refuses a
# run whose next draw depends on such luck.
schema.config.phases.stateful.inference.algorithms = []


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    """Answers by request and status over the module, summed up at its end (``pytest -s``);
    the figures reported for issue 11 come from here."""
    counts: Counter[str] = Counter()
    yield counts
    by_status: Counter[str] = Counter()
    for name, count in counts.items():
        by_status[name.rsplit(" ", 1)[1][0] + "xx"] += count
    print(f"\nschemathesis: {sum(counts.values())} requests checked, by status {dict(by_status)}")


CONFIG = {
    "auth": {
        "mode": "keys",
        "keys": [{"name": "client", "key": CLIENT_KEY}],
        "admin_keys": [{"name": "admin", "key": ADMIN_KEY}],
    },
}


@pytest.fixture
def live(make_proxy: ProxyFactory) -> Proxy:
    return make_proxy(CONFIG)


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


def test_sequences_of_calls_on_real_objects_answer_as_the_document_says(
    make_proxy: ProxyFactory, tally: Counter[str]
) -> None:
    """Stateful: the document's links (a job's, file's, batch's id from the answer that created
    it) make schemathesis read, cancel and delete objects that exist, so the 200 answers are
    checked too, not only the 404s of made-up ids. Each sequence gets a proxy of its own: what
    is drawn next depends on the answers so far, which must not depend on earlier sequences."""
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.live = make_proxy(CONFIG)

        def teardown(self) -> None:
            self.live.live.stop()

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"base_url": self.live.url, "headers": headers, "timeout": 10}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: object
        ) -> None:
            tally[f"stateful {case.method} {case.path} {response.status_code}"] += 1
            kwargs.pop("additional_checks", None)
            case.validate_response(
                response, checks=CHECKS, headers=headers, transport_kwargs=kwargs
            )

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # The links did their job: objects that exist were read, not only made-up ids.
    for path in ("/v1/jobs/{job_id}", "/v1/files/{file_id}", "/v1/files/{file_id}/content"):
        assert tally[f"stateful GET {path} 200"], f"no GET {path} of an existing object"
