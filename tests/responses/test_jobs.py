"""``/v1/responses`` as a job endpoint: the worker runs it through the same pipeline."""

from __future__ import annotations

from tests.conftest import Fake, ProxyFactory
from tests.jobs.conftest import finished, http

BODY = {"model": "gpt-4o-mini", "input": "later, please"}


def test_responses_job_result_equals_the_sync_answer(
    make_proxy: ProxyFactory, fake: Fake, redis_url: str
) -> None:
    proxy = make_proxy({"redis": {"url": redis_url}, "jobs": {"poll_interval_s": 0.1}})
    job = http("POST", f"{proxy.url}/v1/jobs", {"endpoint": "/v1/responses", "body": BODY})
    assert job.status == 202, job.body
    done = finished(proxy.url, job.json()["id"])
    assert done["status"] == "completed"
    assert done["response"]["status_code"] == 200
    result = done["response"]["body"]
    assert result["object"] == "response" and result["status"] == "completed"
    assert result["output"][0]["content"][0]["text"] == "echo: later, please"
    # The job went through the cache: the same request now is a hit with the same object.
    sync = http("POST", f"{proxy.url}/v1/responses", BODY)
    assert sync.headers["X-Cache"] == "HIT"
    assert sync.json() == result
    assert fake.state.calls["/v1/responses"] == 1
    # ... and through the origin stage: the stored response is found where it was made.
    stored = http("GET", f"{proxy.url}/v1/responses/{result['id']}")
    assert stored.status == 200 and stored.json()["id"] == result["id"]
