"""The Batch API through the official SDK, end to end: files, batches, output and error files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.batches.conftest import (
    chat_line,
    embed_line,
    jsonl,
    read_jsonl,
    upload,
    wait_done,
)
from tests.conftest import KEY_B, Fake, Proxy
from tests.support import http

MakeProxy = Callable[..., Proxy]


@pytest.fixture(params=["memory", "redis"])
def any_store(request: pytest.FixtureRequest, batch_proxy: MakeProxy) -> Proxy:
    if request.param == "memory":
        return batch_proxy()
    return batch_proxy(redis={"url": request.getfixturevalue("redis_url")})


def test_chat_batch_end_to_end(any_store: Proxy, fake: Fake) -> None:
    client = any_store.client()
    lines = [chat_line(f"req-{i}", f"hello {i}") for i in range(25)]
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert file.object == "file" and file.purpose == "batch" and file.bytes == len(jsonl(lines))
    assert client.files.retrieve(file.id).filename == "in.jsonl"
    assert client.files.content(file.id).content == jsonl(lines)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "1"},
    )
    assert batch.status == "validating" and batch.metadata == {"run": "1"}
    done = wait_done(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (25, 25)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.expires_at
    assert done.model == "gpt-4o-mini" and done.usage is not None and done.usage.total_tokens > 0
    out = read_jsonl(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(25))
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        i = o["custom_id"].split("-")[1]
        assert o["response"]["body"]["choices"][0]["message"]["content"] == f"echo: hello {i}"
    assert fake.state.calls["/v1/chat/completions"] == 25
    out_file = client.files.retrieve(done.output_file_id or "")
    assert out_file.purpose == "batch_output" and out_file.filename == f"{batch.id}_output.jsonl"
    listed = client.batches.list()
    assert [b.id for b in listed.data] == [batch.id]
    assert {f.id for f in client.files.list().data} == {file.id, out_file.id}


def test_embeddings_batch_is_micro_batched_upstream(batch_proxy: MakeProxy, fake: Fake) -> None:
    proxy = batch_proxy(batching={"embeddings": {"max_wait_ms": 20}})
    fake.state.latency_ms = 20
    client = proxy.client()
    lines = [embed_line(f"e{i}", f"text {i}") for i in range(200)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/embeddings",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 200
    out = read_jsonl(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"e{i}" for i in range(200))
    assert all(len(o["response"]["body"]["data"]) == 1 for o in out)
    # Lines were merged: far fewer upstream calls than lines.
    assert fake.state.calls["/v1/embeddings"] < 50
    assert fake.state.inputs["/v1/embeddings"] == 200


def test_malformed_and_duplicate_lines_fail_the_batch_naming_each_line(
    batch_proxy: MakeProxy, fake: Fake
) -> None:
    client = batch_proxy().client()
    lines: list[Any] = [
        chat_line("a", "fine"),
        b"{not json",
        chat_line("a", "duplicate id"),
        {**chat_line("c", "x"), "method": "GET"},
        {**chat_line("d", "x"), "url": "/v1/embeddings"},
        {**chat_line("e", "x"), "body": "text"},
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        [1, 2],
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None and done.errors.object == "list"
    seen = {(e.line, e.code, e.param) for e in done.errors.data or []}
    assert seen == {
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_method", "method"),
        (5, "mismatched_endpoint", "url"),
        (6, "invalid_body", "body"),
        (7, "missing_required_parameter", "custom_id"),
        (8, "invalid_json_line", None),
    }
    assert done.output_file_id is None and done.error_file_id is None
    assert fake.state.calls["/v1/chat/completions"] == 0


def test_lines_failing_upstream_with_400_are_exactly_the_error_file(
    any_store: Proxy, fake: Fake
) -> None:
    client = any_store.client()
    lines = []
    for i in range(30):
        line = chat_line(f"r{i}", f"q {i}")
        if i % 7 == 3:
            line["body"]["messages"] = []  # the fake answers 400
            line["body"]["seed"] = i  # distinct, so that single flight does not join them
        lines.append(line)
    bad = {f"r{i}" for i in range(30) if i % 7 == 3}
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (30, 30 - len(bad), len(bad))
    out = read_jsonl(client, done.output_file_id)
    errors = read_jsonl(client, done.error_file_id)
    assert {e["custom_id"] for e in errors} == bad
    assert {o["custom_id"] for o in out} == {f"r{i}" for i in range(30)} - bad
    for e in errors:
        assert e["response"]["status_code"] == 400 and e["error"] is None
        assert e["response"]["body"]["error"]["param"] == "messages"
    assert fake.state.calls["/v1/chat/completions"] == 30  # a 400 is not retried


def test_lines_may_name_different_models(batch_proxy: MakeProxy) -> None:
    client = batch_proxy().client()
    lines = [chat_line("a", "x", "gpt-4o-mini"), chat_line("b", "y", "gpt-4o")]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.model is None
    out = {o["custom_id"]: o for o in read_jsonl(client, done.output_file_id)}
    assert out["a"]["response"]["body"]["model"] == "gpt-4o-mini"
    assert out["b"]["response"]["body"]["model"] == "gpt-4o"


def test_cancel_lets_running_lines_finish_and_keeps_a_partial_output(
    batch_proxy: MakeProxy, fake: Fake
) -> None:
    client = batch_proxy(batches={"concurrency": 2}).client()
    fake.state.latency_ms = 100
    lines = [chat_line(f"c{i}", f"n {i}") for i in range(200)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline_batch = wait_until(
        client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2
    )
    assert deadline_batch.status == "in_progress"
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at
    done = wait_done(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.request_counts is not None
    completed = done.request_counts.completed
    assert 2 <= completed < 200
    out = read_jsonl(client, done.output_file_id)
    errors = read_jsonl(client, done.error_file_id)
    assert len(out) == completed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    ids = [o["custom_id"] for o in out] + [e["custom_id"] for e in errors]
    assert sorted(ids) == sorted(f"c{i}" for i in range(200))
    assert fake.state.calls["/v1/chat/completions"] == completed  # nothing ran after the cancel


def wait_until(client: openai.OpenAI, batch_id: str, check: Callable[[Any], bool]) -> Any:
    import time

    deadline = time.monotonic() + 20
    while True:
        batch = client.batches.retrieve(batch_id)
        if check(batch):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.02)


def test_unfinished_lines_expire_at_the_end_of_the_window(
    batch_proxy: MakeProxy, fake: Fake
) -> None:
    client = batch_proxy(batches={"completion_window_s": 1.5, "concurrency": 1}).client()
    fake.state.latency_ms = 200
    lines = [chat_line(f"x{i}", f"n {i}") for i in range(40)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert batch.expires_at == batch.created_at + 1 or batch.expires_at == batch.created_at + 2
    done = wait_done(client, batch.id)
    assert done.status == "expired" and done.expired_at
    out = read_jsonl(client, done.output_file_id)
    errors = read_jsonl(client, done.error_file_id)
    assert 1 <= len(out) < 40
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    ids = [o["custom_id"] for o in out] + [e["custom_id"] for e in errors]
    assert sorted(ids) == sorted(f"x{i}" for i in range(40))


def test_another_tenant_gets_404_for_files_and_batches(batch_proxy: MakeProxy) -> None:
    proxy = batch_proxy()
    a, b = proxy.client(), proxy.client(api_key=KEY_B)
    file_id = upload(a, jsonl([chat_line("a", "x")]))
    batch = a.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: b.files.retrieve(file_id),
        lambda: b.files.content(file_id),
        lambda: b.files.delete(file_id),
        lambda: b.batches.retrieve(batch.id),
        lambda: b.batches.cancel(batch.id),
        lambda: b.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.files.list().data == [] and b.batches.list().data == []
    assert wait_done(a, batch.id).status == "completed"


def test_limits_lines_and_bytes(batch_proxy: MakeProxy) -> None:
    client = batch_proxy(batches={"max_lines": 3}, files={"max_bytes": 4000}).client()
    file_id = upload(client, jsonl([chat_line(f"l{i}", "x") for i in range(4)]))
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "at most 3" in info.value.message
    with pytest.raises(openai.APIStatusError) as too_big:
        upload(client, b"x" * 5000)
    assert too_big.value.status_code == 413
    assert [f.id for f in client.files.list().data] == [file_id]


def test_create_is_checked(batch_proxy: MakeProxy) -> None:
    client = batch_proxy().client()
    file_id = upload(client, jsonl([chat_line("a", "x")]))
    for kwargs in (
        {"endpoint": "/v1/images/generations", "completion_window": "24h"},
        {"endpoint": "/v1/chat/completions", "completion_window": "1h"},
        {"endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": 1}},
    ):
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=file_id, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")


def test_list_pages_and_file_delete(batch_proxy: MakeProxy) -> None:
    client = batch_proxy().client()
    file_id = upload(client, jsonl([chat_line("a", "x")]))
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list()] == ids[::-1]  # the SDK pages with `after`
    deleted = client.files.delete(file_id)
    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_passthrough_forwards_files_and_batches_to_the_upstream(
    batch_proxy: MakeProxy, fake: Fake
) -> None:
    client = batch_proxy(batches={"mode": "passthrough"}).client()
    client.files.with_raw_response.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    client.batches.with_raw_response.create(
        input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h"
    )
    client.batches.with_raw_response.retrieve("batch_x")
    assert fake.state.calls["/v1/files"] == 1
    assert fake.state.calls["/v1/batches"] == 1
    assert fake.state.calls["/v1/batches/batch_x"] == 1


def test_a_file_name_cannot_reach_the_download_headers(batch_proxy: MakeProxy) -> None:
    client = batch_proxy().client()
    name = "in; x=1.jsonl"
    file_id = client.files.create(file=(name, b"{}\n"), purpose="batch").id
    assert client.files.retrieve(file_id).filename == name
    raw = client.files.with_raw_response.content(file_id)
    assert raw.headers["content-disposition"] == 'attachment; filename="in_ x_1.jsonl"'
    assert raw.content == b"{}\n"


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "multipart/form-data"],
    ids=["bad-body", "no-boundary"],
)
def test_a_malformed_upload_is_a_400_and_leaves_nothing(
    batch_proxy: MakeProxy, content_type: str
) -> None:
    import http.client

    proxy = batch_proxy()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.live.port, timeout=10)
    body = b"y" * 5000
    conn.request(
        "POST", "/v1/files", body, {"Content-Type": content_type, "Authorization": "Bearer sk-a"}
    )
    resp = conn.getresponse()
    assert resp.status == 400
    assert b"invalid_request_error" in resp.read()
    conn.close()
    assert proxy.client(api_key="sk-a").files.list().data == []


def test_a_line_that_meets_a_5xx_is_retried_like_a_job(batch_proxy: MakeProxy, fake: Fake) -> None:
    from bench.fake_upstream import Scripted

    client = batch_proxy(batches={"concurrency": 1}).client()
    error = {"error": {"message": "overloaded", "type": "server_error"}}
    fake.state.script.append(Scripted(503, error, path="/v1/chat/completions"))
    fake.state.script.append(Scripted(429, error, {"retry-after-ms": "10"}, "/v1/chat/completions"))
    lines = [chat_line("only", "retry me")]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
    assert fake.state.calls["/v1/chat/completions"] == 3
    (out,) = read_jsonl(client, done.output_file_id)
    assert out["custom_id"] == "only" and out["response"]["status_code"] == 200


def test_retries_run_out_into_the_error_file(batch_proxy: MakeProxy, fake: Fake) -> None:
    from bench.fake_upstream import Scripted

    client = batch_proxy(jobs={"max_attempts": 2, "backoff_base_s": 0.01}).client()
    error = {"error": {"message": "down", "type": "server_error"}}
    for _ in range(2):
        fake.state.script.append(Scripted(500, error, path="/v1/chat/completions"))
    batch = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line("z", "fails")])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.output_file_id is None
    (err,) = read_jsonl(client, done.error_file_id)
    assert err["custom_id"] == "z" and err["response"]["status_code"] == 500
    assert fake.state.calls["/v1/chat/completions"] == 2


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/files/file-x/content", 405),
        ("PUT", "/v1/files", 405),
        ("DELETE", "/v1/batches/b", 405),
        ("GET", "/v1/files/file-x/other", 404),
        ("POST", "/v1/batches/b/retry", 404),
    ],
)
def test_other_methods_on_emulated_routes_never_reach_the_upstream(
    batch_proxy: MakeProxy, fake: Fake, method: str, path: str, status: int
) -> None:
    """Files and batches live in this proxy: another method on one of its routes is a 405, and
    another path under them a 404, here, never a request to the default upstream with the
    client's key about an id it never saw."""
    proxy = batch_proxy()
    raw = http.request(method, f"{proxy.url}{path}", b"", {"Authorization": "Bearer sk-a"})
    assert raw.status == status and raw.json()["error"]["type"] == "invalid_request_error"
    if status == 404:
        assert f"{method} {path}" in raw.json()["error"]["message"]
    else:
        assert raw.headers["allow"]
    assert fake.state.requests == []
