"""X-Request-ID: the client's when sane, else generated; upstream, client, log line and job."""

from __future__ import annotations

import pytest

from proxy.observe.note import request_id_from
from tests.conftest import Fake, ProxyFactory
from tests.jobs.conftest import http as job_http
from tests.jobs.conftest import wait_for
from tests.observe.helpers import Lines
from tests.support import http

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_sane_client_id_is_kept_everywhere(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    lines = Lines(proxy)
    given = "trace-" + "x" * 122  # 128 visible ASCII characters
    answer = http.post(f"{proxy.base_url}/chat/completions", CHAT, {"X-Request-ID": given})
    assert answer.headers["x-request-id"] == given
    [sent] = fake.state.requests
    assert [v for k, v in sent.headers.items() if k.lower() == "x-request-id"] == [given]
    assert [line["request_id"] for line in lines.parsed()] == [given]


@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "has space", "tab\there", "caf\u00e9"],
)
def test_an_insane_client_id_is_replaced(make_proxy: ProxyFactory, fake: Fake, bad: str) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    headers = {"X-Request-ID": bad.encode("utf-8").decode("latin-1")}
    answer = http.post(f"{proxy.base_url}/chat/completions", CHAT, headers)
    assert answer.status == 200
    ours = answer.headers["x-request-id"]
    assert ours != bad and request_id_from(ours) == ours
    [sent] = fake.state.requests
    assert [v for k, v in sent.headers.items() if k.lower() == "x-request-id"] == [ours]


def test_generated_ids_are_unique_and_every_answer_has_one(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy()
    ids = {
        http.post(f"{proxy.base_url}/chat/completions", CHAT).headers["x-request-id"]
        for _ in range(5)
    }
    ids.add(http.get(f"{proxy.base_url}/nothing/here").headers["x-request-id"])  # a 404 too
    assert len(ids) == 6


def test_a_job_keeps_the_submitting_request_id(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    submitted = job_http(
        "POST",
        f"{proxy.base_url}/jobs",
        {"endpoint": "/v1/chat/completions", "body": CHAT},
        headers={"X-Request-ID": "job-trace-1"},
    )
    assert submitted.status == 202 and submitted.headers["X-Request-ID"] == "job-trace-1"
    job_id = submitted.json()["id"]

    def done() -> dict[str, object] | None:
        job = job_http("GET", f"{proxy.base_url}/jobs/{job_id}").json()
        return job if job["status"] == "completed" else None

    job = wait_for(done, what="the job to complete")
    assert job["request_id"] == "job-trace-1"
    [sent] = fake.state.requests
    assert [v for k, v in sent.headers.items() if k.lower() == "x-request-id"] == ["job-trace-1"]
