"""``proxy.cache.responses``: what may be stored, and the two forms of one answer."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.cache.responses import RESPONSES, is_background, render_events, to_json
from proxy.cache.storable import storable_json, storable_stream

TEXT = {"type": "output_text", "text": "hi there", "annotations": [], "logprobs": []}
MESSAGE = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
           "content": [TEXT]}  # fmt: skip
CALL = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
        "name": "f", "arguments": '{"a": 1}'}  # fmt: skip
RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "error": None,
    "output": [MESSAGE, CALL],
    "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
}


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events
    )


def test_json_is_storable_only_when_completed() -> None:
    assert storable_json(RESPONSES, orjson.dumps(RESPONSE))
    for status in ("incomplete", "failed", "queued", "in_progress", "cancelled"):
        assert not storable_json(RESPONSES, orjson.dumps({**RESPONSE, "status": status}))
    error = {"code": "server_error", "message": "x"}
    assert not storable_json(RESPONSES, orjson.dumps({**RESPONSE, "error": error}))
    assert not storable_json(RESPONSES, b"not json")


def test_streams_are_storable_only_when_they_end_completed() -> None:
    created = {"type": "response.created", "response": {**RESPONSE, "status": "in_progress"}}
    done = {"type": "response.completed", "response": RESPONSE}
    assert storable_stream(RESPONSES, sse(created, done))
    assert not storable_stream(RESPONSES, sse(created))  # cut off
    assert not storable_stream(RESPONSES, sse(created, {"type": "error", "message": "x"}, done))
    failed = {"type": "response.failed", "response": {**RESPONSE, "status": "failed"}}
    assert not storable_stream(RESPONSES, sse(created, failed))
    assert not storable_stream(RESPONSES, sse(created) + b"data: {broken\n\n" + sse(done))


def test_rendered_events_read_back_as_the_same_object() -> None:
    chunks = render_events(orjson.dumps(RESPONSE))
    assert chunks is not None
    raw = b"".join(chunks)
    assert storable_stream(RESPONSES, raw)
    assert orjson.loads(to_json(raw) or b"") == RESPONSE
    events = [orjson.loads(c.split(b"\ndata: ", 1)[1]) for c in chunks]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for chunk, event in zip(chunks, events, strict=True):
        assert chunk.startswith(b"event: %s\n" % event["type"].encode())
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []


def test_refusals_are_rendered_with_their_own_events() -> None:
    refused = {**MESSAGE, "content": [{"type": "refusal", "refusal": "I can't"}]}
    chunks = render_events(orjson.dumps({**RESPONSE, "output": [refused]}))
    assert chunks is not None
    types = [orjson.loads(c.split(b"\ndata: ", 1)[1])["type"] for c in chunks]
    assert "response.refusal.delta" in types and "response.refusal.done" in types
    assert orjson.loads(to_json(b"".join(chunks)) or b"")["output"] == [refused]


@pytest.mark.parametrize(
    "output",
    [
        [{**MESSAGE, "content": [{**TEXT, "annotations": [{"type": "url_citation"}]}]}],
        [{"id": "rs_1", "type": "reasoning", "summary": []}],
        [{"id": "ws_1", "type": "web_search_call", "status": "completed"}],
    ],
    ids=["annotations", "reasoning", "built-in-tool"],
)
def test_what_cannot_be_rendered_faithfully_is_not(output: list[Any]) -> None:
    assert render_events(orjson.dumps({**RESPONSE, "output": output})) is None


def test_only_a_true_background_flag_counts() -> None:
    assert is_background({"background": True})
    assert not is_background({"background": False})
    assert not is_background({})
