"""Edge cases of the job API found in review: each test failed before its fix."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from proxy.jobs.webhooks import callback_allowed
from tests.conftest import Fake, Proxy
from tests.jobs.conftest import CHAT, finished, http, wait_for

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


def test_shutdown_puts_a_running_job_back_uncounted(jobs_proxy: JobsProxy, fake: Fake) -> None:
    a = jobs_proxy()
    fake.state.latency_ms = 30_000
    job_id = http("POST", f"{a.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    job_id = job_id.json()["id"]
    wait_for(lambda: fake.state.in_flight == 1, what="the upstream call to start")
    a.live.stop()  # a clean shutdown (SIGTERM): the job goes back at once
    fake.state.latency_ms = 0
    b = jobs_proxy({"lease_s": 60})  # a lapsed lease cannot be what brings it back
    done = finished(b.url, job_id)
    assert done["status"] == "completed" and done["attempts"] == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://allowed.com.evil.net/",
        "http://evil.net#allowed.com",
        "http://evil.net/#@allowed.com",
        "http://evil.net?x=.allowed.com",
        "http://allowed.com@evil.net/",
        "http://allowed.com:pw@evil.net/",
        "http://x@allowed.com/",
        "http://allowed.com\\@evil.net/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.0.0.1/",
        "http://allowed.com./",  # refused rather than normalised: it is not the allowed name
        "ftp://allowed.com/",
        "//allowed.com/",
        "http:///allowed.com",
        "http://allowed.com:99999/",
    ],
)
def test_callback_allow_matches_the_host_exactly(url: str) -> None:
    assert not callback_allowed(url, ["allowed.com", "*.hooks.example"])


@pytest.mark.parametrize(
    "url", ["http://allowed.com/x", "https://ALLOWED.COM/x", "https://a.hooks.example:8443/h"]
)
def test_callback_allow_accepts_allowed_hosts(url: str) -> None:
    assert callback_allowed(url, ["allowed.com", "*.hooks.example"])
