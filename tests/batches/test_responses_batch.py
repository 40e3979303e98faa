"""``/v1/responses`` as a Batch API endpoint: the lines run through the pipeline like any other
endpoint's, and the output file holds each line's Response object."""

from __future__ import annotations

from tests.batches.conftest import jsonl, read_jsonl, upload, wait_done
from tests.batches.test_sdk import MakeProxy
from tests.conftest import Fake


def _line(custom_id: str, text: str) -> dict[str, object]:
    body = {"model": "gpt-4o-mini", "input": text}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def test_a_responses_batch_runs_every_line(batch_proxy: MakeProxy, fake: Fake) -> None:
    client = batch_proxy().client()
    file_id = upload(client, jsonl([_line("a", "first"), _line("b", "second")]))
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/responses", completion_window="24h"
    )
    done = wait_done(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    out = {line["custom_id"]: line for line in read_jsonl(client, done.output_file_id)}
    assert set(out) == {"a", "b"}
    for custom_id, text in (("a", "first"), ("b", "second")):
        response = out[custom_id]["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == f"echo: {text}"
    assert fake.state.calls["/v1/responses"] == 2
