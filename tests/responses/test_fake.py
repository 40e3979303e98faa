"""The fake upstream's Responses API, read by the official SDK directly (no proxy): the shapes the
proxy's tests rely on are the SDK's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from bench.fake_upstream import RESPONSES_ERROR_WORD, RESPONSES_FAILED_WORD
from tests.conftest import KEY_A, Fake

TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


@pytest.fixture
def direct(fake: Fake) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url, api_key=KEY_A, max_retries=0) as client:
        yield client


def test_json_and_stream_agree(direct: openai.OpenAI) -> None:
    plain = direct.responses.create(model="gpt-4o-mini", input="hello there")
    assert plain.status == "completed"
    assert plain.output_text == "echo: hello there"
    events = list(direct.responses.create(model="gpt-4o-mini", input="hello there", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    # The same answer (ids differ: they are derived from the request body, `stream` included).
    assert completed.response.output_text == plain.output_text
    assert completed.response.usage == plain.usage


def test_stream_helper_accepts_text_and_function_calls(direct: openai.OpenAI) -> None:
    with direct.responses.stream(model="gpt-4o-mini", input="one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: one two three"
    with direct.responses.stream(
        model="gpt-4o-mini", input="weather in Paris?", tools=TOOLS
    ) as stream:
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather" and call.arguments == '{"city": "Paris"}'


def test_failed_and_error_streams(direct: openai.OpenAI) -> None:
    failed = list(
        direct.responses.create(model="gpt-4o-mini", input=RESPONSES_FAILED_WORD, stream=True)
    )
    assert failed[-1].type == "response.failed"
    assert failed[-1].response.error is not None
    broken = list(
        direct.responses.create(model="gpt-4o-mini", input=RESPONSES_ERROR_WORD, stream=True)
    )
    assert broken[-1].type == "error"


def test_stored_response_routes(direct: openai.OpenAI) -> None:
    first = direct.responses.create(model="gpt-4o-mini", input="my name is Ada")
    assert direct.responses.retrieve(first.id).output_text == "echo: my name is Ada"
    items = direct.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    second = direct.responses.create(
        model="gpt-4o-mini", input="who am I?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "echo: who am I? (turn 2)"
    queued = direct.responses.create(model="gpt-4o-mini", input="later", background=True)
    assert queued.status == "queued"
    assert direct.responses.cancel(queued.id).status == "cancelled"
    direct.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        direct.responses.retrieve(first.id)
