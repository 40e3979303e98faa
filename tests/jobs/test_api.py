"""The job API through raw HTTP against a real proxy, real Redis and the fake upstream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import pytest

from bench.fake_upstream import Scripted
from tests.conftest import KEY_B, Fake, Proxy
from tests.jobs.conftest import CHAT, EMBED, finished, http, wait_for

JobsProxy = Callable[..., Proxy]


def test_submit_returns_202_location_and_result_equals_sync(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    resp = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT,
                                             "metadata": {"batch": "7"}})  # fmt: skip
    assert resp.status == 202, resp.body
    job = resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_") and len(job["id"]) == 36
    assert job["object"] == "job" and job["status"] in ("queued", "in_progress")
    assert job["endpoint"] == "/v1/chat/completions" and job["metadata"] == {"batch": "7"}
    assert job["run_after"] is None and isinstance(job["created_at"], int)
    done = finished(p.url, job["id"])
    sync = http("POST", f"{p.url}/v1/chat/completions", CHAT)
    assert done["status"] == "completed" and done["attempts"] == 1
    assert done["response"] == {"status_code": 200, "body": sync.json()}
    assert done["completed_at"] >= done["created_at"]


def test_prefer_respond_async_on_chat_and_embeddings(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", EMBED)):
        resp = http("POST", f"{p.url}{path}", body, headers={"Prefer": "respond-async"})
        assert resp.status == 202, resp.body
        assert resp.headers["Preference-Applied"] == "respond-async"
        job = resp.json()
        assert job["endpoint"] == path and resp.headers["Location"] == f"/v1/jobs/{job['id']}"
        done = finished(p.url, job["id"])
        assert done["response"]["body"] == http("POST", f"{p.url}{path}", body).json()


def test_job_runs_through_the_pipeline_so_the_cache_answers(
    jobs_proxy: JobsProxy, fake: Fake
) -> None:
    p = jobs_proxy(cache={"enabled": True})
    sync = http("POST", f"{p.url}/v1/chat/completions", CHAT).json()
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert done["response"]["body"] == sync
    assert fake.state.calls["/v1/chat/completions"] == 1


def test_run_after_is_honoured(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    run_after = int(time.time()) + 2
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": run_after}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    assert job["run_after"] == run_after
    assert http("GET", f"{p.url}/v1/jobs/{job['id']}").json()["status"] == "queued"
    done = finished(p.url, job["id"])
    assert fake.state.requests and time.time() >= run_after
    assert done["status"] == "completed" and done["completed_at"] >= run_after


def _script(fake: Fake, *replies: Scripted) -> None:
    fake.live.bg.call(lambda: fake.state.script.extend(replies))


def test_retries_503_twice_then_completes(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    err = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
    _script(fake, Scripted(503, err), Scripted(503, err))
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert done["status"] == "completed" and done["attempts"] == 3
    assert fake.state.calls["/v1/chat/completions"] == 3


def test_429_retry_after_is_waited_out(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    err = {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}
    _script(fake, Scripted(429, err, headers={"Retry-After": "1"}))
    start = time.monotonic()
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert done["status"] == "completed" and done["attempts"] == 2
    assert time.monotonic() - start >= 1.0


def test_a_job_waiting_for_its_next_attempt_says_why_and_when(
    jobs_proxy: JobsProxy, fake: Fake
) -> None:
    p = jobs_proxy()
    err = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit"}}
    _script(fake, Scripted(429, err, headers={"Retry-After": "3"}))
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    url = f"{p.url}/v1/jobs/{job.json()['id']}"
    waiting = wait_for(
        lambda: (j := http("GET", url).json())["status"] == "queued" and "last_error" in j and j,
        what="the job to wait for its second attempt",
    )
    assert waiting["attempts"] == 1
    assert waiting["last_error"] == {"status": 429, "code": "rate_limit", "message": "slow down"}
    assert time.time() + 1 < waiting["next_attempt_at"] <= time.time() + 4
    done = finished(p.url, waiting["id"])
    assert done["status"] == "completed" and "last_error" not in done
    assert "next_attempt_at" not in done


def test_400_fails_at_once_with_the_upstream_error(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    err = {"error": {"message": "bad messages", "type": "invalid_request_error", "code": "x"}}
    _script(fake, Scripted(400, err))
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["message"] == "bad messages" and done["error"]["code"] == "x"
    assert done["error"]["response"] == {"status_code": 400, "body": err}
    assert "response" not in done


def test_retries_stop_at_max_attempts(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy({"max_attempts": 2})
    err = {"error": {"message": "down", "type": "server_error", "code": None}}
    _script(fake, Scripted(502, err), Scripted(502, err), Scripted(502, err))
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert done["status"] == "failed" and done["attempts"] == 2
    assert done["error"]["response"]["status_code"] == 502


def test_cancel_queued_job(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    resp = http("POST", f"{p.url}/v1/jobs/{job['id']}/cancel")
    assert resp.status == 200 and resp.json()["status"] == "cancelled"
    assert http("GET", f"{p.url}/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert fake.state.calls["/v1/chat/completions"] == 0


def test_cancel_running_job_aborts_the_upstream_call(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    fake.state.latency_ms = 30_000
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    job_id = job.json()["id"]
    wait_for(lambda: fake.state.in_flight == 1, what="the upstream call to start")
    assert http("GET", f"{p.url}/v1/jobs/{job_id}").json()["status"] == "in_progress"
    resp = http("POST", f"{p.url}/v1/jobs/{job_id}/cancel")
    assert resp.status == 200 and resp.json()["status"] == "cancelled"
    wait_for(lambda: fake.state.in_flight == 0, what="the upstream call to be aborted")


def test_ownership_other_tenant_sees_nothing(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    job_id = http("POST", f"{p.url}/v1/jobs", body).json()["id"]
    for method, path in (("GET", ""), ("POST", "/cancel"), ("DELETE", "")):
        resp = http(method, f"{p.url}/v1/jobs/{job_id}{path}", key=KEY_B)
        assert resp.status == 404 and resp.json()["error"]["code"] == "not_found"
    listed = http("GET", f"{p.url}/v1/jobs", key=KEY_B).json()
    assert listed == {"object": "list", "data": [], "first_id": None, "last_id": None,
                      "has_more": False}  # fmt: skip
    assert http("GET", f"{p.url}/v1/jobs/{job_id}").json()["status"] == "queued"


def test_list_newest_first_with_paging_and_status(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    ids = [http("POST", f"{p.url}/v1/jobs", body).json()["id"] for _ in range(3)]
    first = http("GET", f"{p.url}/v1/jobs?limit=2").json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    rest = http("GET", f"{p.url}/v1/jobs?limit=2&after={first['last_id']}").json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    http("POST", f"{p.url}/v1/jobs/{ids[1]}/cancel")
    cancelled = http("GET", f"{p.url}/v1/jobs?status=cancelled").json()
    assert [j["id"] for j in cancelled["data"]] == [ids[1]]
    assert http("GET", f"{p.url}/v1/jobs?limit=0").status == 400
    assert http("GET", f"{p.url}/v1/jobs?status=weird").status == 400


def test_delete_finished_job(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    job_id = http("POST", f"{p.url}/v1/jobs", body).json()["id"]
    resp = http("DELETE", f"{p.url}/v1/jobs/{job_id}")
    assert resp.status == 400 and resp.json()["error"]["code"] == "job_not_finished"
    http("POST", f"{p.url}/v1/jobs/{job_id}/cancel")
    resp = http("DELETE", f"{p.url}/v1/jobs/{job_id}")
    assert resp.json() == {"id": job_id, "object": "job.deleted", "deleted": True}
    assert http("GET", f"{p.url}/v1/jobs/{job_id}").status == 404


def test_idempotency_key(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    headers = {"Idempotency-Key": "order-42"}
    a = http("POST", f"{p.url}/v1/jobs", body, headers=headers)
    b = http("POST", f"{p.url}/v1/jobs", body, headers=headers)
    assert a.status == b.status == 202 and a.json()["id"] == b.json()["id"]
    assert b.headers.get("Idempotent-Replayed") == "true"
    other = http("POST", f"{p.url}/v1/jobs", body, headers=headers, key=KEY_B)
    assert other.json()["id"] != a.json()["id"]
    changed = {**body, "body": {**CHAT, "temperature": 0.5}}
    resp = http("POST", f"{p.url}/v1/jobs", changed, headers=headers)
    assert resp.status == 400 and resp.json()["error"]["code"] == "idempotency_key_reused"


def test_submission_is_validated_before_202(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy({"callback_allow": ["hooks.example.com"], "webhook_secret": "s"})
    url = f"{p.url}/v1/jobs"
    cases = [
        {"endpoint": "/v1/chat/completions", "body": {**CHAT, "stream": True}},
        {"endpoint": "/v1/chat/completions", "body": [1]},
        {"endpoint": "/v1/jobs", "body": CHAT},
        # Emulated here (batches.mode: emulate): a job would ask the upstream instead.
        {"endpoint": "/v1/files", "body": {}},
        {"endpoint": "/v1/batches", "body": {"input_file_id": "file-x"}},
        {"endpoint": "chat", "body": CHAT},
        {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": "soon"},
        {"endpoint": "/v1/chat/completions", "body": CHAT, "metadata": {"k": 1}},
        {"endpoint": "/v1/chat/completions", "body": CHAT, "extra": 1},
        {"endpoint": "/v1/chat/completions", "body": {**CHAT, "model": 5}},
        {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": "http://10.0.0.1/x"},
        {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": "http://127.0.0.1/"},
    ]
    for case in cases:
        resp = http("POST", url, case)
        assert resp.status == 400, case
        assert resp.json()["error"]["type"] == "invalid_request_error"
    prefer = {"Prefer": "respond-async"}
    streamed = http("POST", f"{p.url}/v1/chat/completions", {**CHAT, "stream": True},
                    headers=prefer)  # fmt: skip
    assert streamed.status == 400
    assert http("GET", f"{p.url}/v1/jobs").json()["data"] == []
    assert fake.state.calls["/v1/chat/completions"] == 0


def test_max_queued_per_tenant_gives_429(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy({"max_queued_per_tenant": 2})
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    assert [http("POST", f"{p.url}/v1/jobs", body).status for _ in range(2)] == [202, 202]
    resp = http("POST", f"{p.url}/v1/jobs", body)
    assert resp.status == 429 and resp.json()["error"]["type"] == "rate_limit_error"
    assert http("POST", f"{p.url}/v1/jobs", body, key=KEY_B).status == 202


def test_rate_limit_spreads_the_work(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy({"rate_limit": {"fake": {"requests_per_minute": 300}}})  # 5 per second
    ids = [
        http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/embeddings", "body": EMBED}).json()["id"]
        for _ in range(10)
    ]
    start = time.monotonic()
    for job_id in ids:
        assert finished(p.url, job_id)["status"] == "completed"
    # A burst of one second's worth (5), then one every 0.2 s.
    assert time.monotonic() - start >= 0.8


def test_a_binary_answer_is_kept_byte_exact(jobs_proxy: JobsProxy, fake: Fake) -> None:
    """Audio through ``Prefer: respond-async``: bytes that are not UTF-8 come back unchanged,
    in the job object (base64) and from ``/content`` (raw, with the upstream's content type)."""
    p = jobs_proxy()
    speech = {"model": "tts-1", "input": "hello", "voice": "alloy"}
    sync = http("POST", f"{p.url}/v1/audio/speech", speech)
    assert sync.status == 200 and sync.headers["Content-Type"] == "audio/mpeg"
    with pytest.raises(UnicodeDecodeError):
        sync.body.decode("utf-8")  # the point of the test: not text
    resp = http("POST", f"{p.url}/v1/audio/speech", speech, headers={"Prefer": "respond-async"})
    assert resp.status == 202, resp.body
    done = finished(p.url, resp.json()["id"])
    assert done["status"] == "completed"
    response = done["response"]
    assert response["status_code"] == 200 and "body" not in response
    assert response["content_type"] == "audio/mpeg"
    assert base64.b64decode(response["body_base64"]) == sync.body
    raw = http("GET", f"{p.url}/v1/jobs/{done['id']}/content")
    assert raw.status == 200 and raw.body == sync.body
    assert raw.headers["Content-Type"] == "audio/mpeg"


def test_text_and_json_answers_keep_their_form(jobs_proxy: JobsProxy, fake: Fake) -> None:
    p = jobs_proxy()
    text = "1\n00:00:00,000 --> 00:00:01,000\nhéllo\n"
    _script(
        fake,
        Scripted(200, text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}),
    )
    body = {"endpoint": "/v1/audio/transcriptions", "body": {"model": "whisper-1"}}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    done = finished(p.url, job["id"])
    assert done["response"] == {
        "status_code": 200,
        "body": text,
        "content_type": "text/plain; charset=utf-8",
    }
    raw = http("GET", f"{p.url}/v1/jobs/{job['id']}/content")
    assert raw.body == text.encode() and raw.headers["Content-Type"].startswith("text/plain")
    # JSON answers are as they were: the parsed body, no content type.
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    done = finished(p.url, job.json()["id"])
    assert set(done["response"]) == {"status_code", "body"}
    raw = http("GET", f"{p.url}/v1/jobs/{done['id']}/content")
    assert raw.headers["Content-Type"] == "application/json"
    assert json.loads(raw.body) == done["response"]["body"]


def test_content_of_an_unfinished_job_is_refused(jobs_proxy: JobsProxy) -> None:
    p = jobs_proxy()
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    raw = http("GET", f"{p.url}/v1/jobs/{job['id']}/content")
    assert raw.status == 400 and raw.json()["error"]["code"] == "job_not_completed"
    other = http("GET", f"{p.url}/v1/jobs/{job['id']}/content", key=KEY_B)
    assert other.status == 404
