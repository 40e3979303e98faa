"""Edge cases of the job API found in review: each test failed before its fix."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import Fake, Proxy
from tests.jobs.conftest import CHAT, http

JobsProxy = Callable[..., Proxy]


def test_body_over_jobs_max_body_bytes_is_413(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy({"max_body_bytes": 1000})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    prefer = http("POST", f"{p.url}/v1/chat/completions", big, headers={"Prefer": "respond-async"})
    assert prefer.status == 413, prefer.body
    assert prefer.json()["error"]["code"] == "request_too_large"
    direct = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": big})
    assert direct.status == 413


def test_run_after_out_of_range_is_400_not_500(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    for run_after in (1e20, 2**64, time.time() * 1000):  # the last: milliseconds by mistake
        body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": run_after}
        resp = http("POST", f"{p.url}/v1/jobs", body)
        assert resp.status == 400, (run_after, resp.status, resp.body)
        assert resp.json()["error"]["param"] == "run_after"


def test_endpoint_cannot_climb_out_of_v1(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    for endpoint in ("/v1/../admin", "/v1/%2e%2e/admin", "/v1/./chat/completions",
                     "/v1/chat/completions#x", "/v1//chat", "/v1/a b"):  # fmt: skip
        resp = http("POST", f"{p.url}/v1/jobs", {"endpoint": endpoint, "body": CHAT})
        assert resp.status == 400, (endpoint, resp.status)
        assert resp.json()["error"]["param"] == "endpoint"
    assert sum(fake.state.calls.values()) == 0
