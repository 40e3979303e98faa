"""A fast, deterministic OpenAI-compatible fake upstream, for the test suite and the benchmarks.

Every answer is a pure function of the request: ids are derived from a hash of the request body
and `created` is fixed, so a reply through the proxy can be compared byte for byte with a direct
one. Tests steer and inspect it through `app[STATE]` (a `FakeState`).

Routes, all under `/v1`: `POST chat/completions`, `POST completions`, `POST embeddings`,
`POST moderations`, `POST audio/speech` (binary audio bytes), `GET models`, `GET models/{id}`, the
Responses API (`POST responses`, `GET`, `DELETE responses/{id}`, `POST responses/{id}/cancel`,
`GET responses/{id}/input_items`); any other `/v1/...` request gets a JSON echo of what arrived.
`GET /_fake/stats` and `POST /_fake/reset` are out-of-band controls for the benchmark runner;
they are not counted or recorded.

Run it with `python -m bench.fake_upstream --port 9001 [--latency-ms 0] [--chunk-delay-ms 0] ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import re
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDict

from bench._aio import loop_factory

CREATED = 1700000000
SYSTEM_FINGERPRINT = "fp_fake"
DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
    "omni-moderation-latest",
)
DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 8192
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris"}'
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

_JSON = "application/json"
_STATIC_HEADERS = {
    "Content-Type": _JSON,
    "x-ratelimit-remaining-requests": "999",
    "openai-processing-ms": "1",
}
_SSE_HEADERS = {**_STATIC_HEADERS, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_PIECE = re.compile(r"\s*\S+\s*")
_GATE_POLL_S = 0.02

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordedRequest(NamedTuple):
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """One canned reply, consumed FIFO by the next request to `path` (None: any path)."""

    status: int
    body: bytes | dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    delay_ms: float = 0.0

    def matches(self, path: str) -> bool:
        # "/chat/completions" is accepted as shorthand for "/v1/chat/completions".
        return self.path is None or self.path == path or "/v1" + self.path == path


@dataclass
class FakeState:
    """Settings (mutable at any time) and observations of one fake upstream."""

    latency_ms: float = 0.0
    per_input_ms: float = 0.0
    max_concurrency: int | None = None
    chunk_delay_ms: float = 0.0
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    stream_gate: asyncio.Event | None = None
    record_requests: bool = True  # the benchmark CLI turns it off to keep memory flat
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    inputs: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[RecordedRequest] = field(default_factory=list)
    script: list[Scripted] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled_streams: int = 0
    completed_streams: int = 0
    _semaphore: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _semaphore_size: int | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Clear counters, recorded requests and the script; settings are kept."""
        self.calls.clear()
        self.inputs.clear()
        self.requests.clear()
        self.script.clear()
        self.max_in_flight = self.in_flight
        self.cancelled_streams = 0
        self.completed_streams = 0

    def take_scripted(self, path: str) -> Scripted | None:
        """Pop the first scripted reply matching `path`, if any."""
        for i, scripted in enumerate(self.script):
            if scripted.matches(path):
                return self.script.pop(i)
        return None

    def admission(self, n_inputs: int = 0) -> _Admission:
        """Context manager: take a concurrency slot, then sleep the configured latency."""
        delay_s = (self.latency_ms + self.per_input_ms * n_inputs) / 1000
        return _Admission(self._current_semaphore(), delay_s)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "inputs": dict(self.inputs),
            "requests": len(self.requests),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "cancelled_streams": self.cancelled_streams,
            "completed_streams": self.completed_streams,
        }

    def _current_semaphore(self) -> asyncio.Semaphore | None:
        if self.max_concurrency is None:
            return None
        if self._semaphore is None or self._semaphore_size != self.max_concurrency:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_size = self.max_concurrency
        return self._semaphore


STATE = web.AppKey("fake_state", FakeState)


class _Admission:
    __slots__ = ("_semaphore", "_delay_s")

    def __init__(self, semaphore: asyncio.Semaphore | None, delay_s: float) -> None:
        self._semaphore = semaphore
        self._delay_s = delay_s

    async def __aenter__(self) -> None:
        if self._semaphore is not None:
            await self._semaphore.acquire()
        if self._delay_s > 0:
            try:
                await asyncio.sleep(self._delay_s)
            except BaseException:
                if self._semaphore is not None:
                    self._semaphore.release()
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        if self._semaphore is not None:
            self._semaphore.release()


class OpenAIError(Exception):
    """An error answered in OpenAI's `{"error": {...}}` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=orjson.dumps(self.payload), headers=_STATIC_HEADERS
        )


# --- request helpers ---------------------------------------------------------------------------


def _digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=12).hexdigest()


def _headers(digest: str, base: dict[str, str] = _STATIC_HEADERS) -> dict[str, str]:
    return {**base, "x-request-id": f"req_{digest}"}


def _json_response(payload: dict[str, Any], digest: str) -> web.Response:
    return web.Response(body=orjson.dumps(payload), headers=_headers(digest))


def _load(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return payload


def _model(state: FakeState, payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    if model not in state.models:
        raise OpenAIError(
            404,
            f"The model `{model}` does not exist",
            param="model",
            code="model_not_found",
        )
    return model


def _positive_int(payload: dict[str, Any], name: str, default: int, limit: int) -> int:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise OpenAIError(400, f"Invalid value for '{name}': {value!r}", param=name)
    return value


def _text(content: Any) -> str:
    """A message's text: string content, or the text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    """Split into word-sized pieces whose concatenation is exactly `text`."""
    pieces = _PIECE.findall(text)
    if "".join(pieces) != text:  # empty or whitespace-only text
        return [text] if text else []
    return pieces


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _items(value: Any, param: str) -> list[str | list[int]]:
    """Normalise `input`/`prompt`: string, list of strings, token array or list of them."""
    if isinstance(value, str):
        return [value]
    if _is_tokens(value):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) or _is_tokens(v) for v in value):
            return value
    raise OpenAIError(400, f"'$.{param}' is invalid.", param=param)


def _item_text(item: str | list[int]) -> str:
    return item if isinstance(item, str) else " ".join(map(str, item))


def _item_tokens(item: str | list[int]) -> int:
    return _words(item) if isinstance(item, str) else len(item)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# --- chat completions --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chat:
    """Everything a chat reply is made of, computed once per request."""

    id: str
    model: str
    contents: list[str | None]  # per choice; None means a tool call
    call_ids: list[str]
    usage: dict[str, int]


def _chat_reply(payload: dict[str, Any], model: str, digest: str) -> _Chat:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty array", param="messages")
    texts = [_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
    n = _positive_int(payload, "n", 1, 128)
    if payload.get("tools") and "weather" in texts[-1].lower():
        contents: list[str | None] = [None] * n
        completion_tokens = n * _words(TOOL_ARGUMENTS)
    else:
        base = "echo: " + texts[-1]
        contents = [base if j == 0 else f"{base} #{j}" for j in range(n)]
        completion_tokens = sum(_words(c) for c in contents if c is not None)
    prompt_tokens = sum(_words(t) for t in texts)
    return _Chat(
        id=f"chatcmpl-{digest}",
        model=model,
        contents=contents,
        call_ids=[f"call_{digest[:16]}{j}" for j in range(n)],
        usage=_usage(prompt_tokens, completion_tokens),
    )


def _chat_message(chat: _Chat, j: int) -> dict[str, Any]:
    content = chat.contents[j]
    if content is not None:
        return {"role": "assistant", "content": content, "refusal": None}
    call = {
        "id": chat.call_ids[j],
        "type": "function",
        "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}


def _chat_body(chat: _Chat) -> dict[str, Any]:
    choices = [
        {
            "index": j,
            "message": _chat_message(chat, j),
            "logprobs": None,
            "finish_reason": "stop" if content is not None else "tool_calls",
        }
        for j, content in enumerate(chat.contents)
    ]
    return {
        "id": chat.id,
        "object": "chat.completion",
        "created": CREATED,
        "model": chat.model,
        "choices": choices,
        "usage": chat.usage,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _chat_deltas(chat: _Chat, j: int) -> Iterable[dict[str, Any]]:
    content = chat.contents[j]
    if content is not None:
        yield {"role": "assistant", "content": ""}
        for piece in _pieces(content):
            yield {"content": piece}
        return
    yield {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": chat.call_ids[j],
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": ""},
            }
        ],
    }
    for piece in _pieces(TOOL_ARGUMENTS):
        yield {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


def _chat_events(chat: _Chat, include_usage: bool) -> list[bytes]:
    head: dict[str, Any] = {
        "id": chat.id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": chat.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        extra = {"usage": usage} if include_usage else {}
        return _sse({**head, "choices": choices, **extra})

    events = []
    for j, content in enumerate(chat.contents):
        for delta in _chat_deltas(chat, j):
            events.append(chunk([_delta(j, delta, None)]))
        finish = "stop" if content is not None else "tool_calls"
        events.append(chunk([_delta(j, {}, finish)]))
    if include_usage:
        events.append(chunk([], chat.usage))
    events.append(_DONE)
    return events


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    payload = _load(body)
    model = _model(state, payload)
    digest = _digest(body)
    chat = _chat_reply(payload, model, digest)
    async with state.admission():
        if payload.get("stream"):
            events = _chat_events(chat, _include_usage(payload))
            return await _stream(request, state, events, digest)
        return _json_response(_chat_body(chat), digest)


# --- completions -------------------------------------------------------------------------------


async def _completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    payload = _load(body)
    model = _model(state, payload)
    prompts = _items(payload.get("prompt"), "prompt")
    n = _positive_int(payload, "n", 1, 128)
    state.inputs[request.path] += len(prompts)
    digest = _digest(body)
    bases = ["completion: " + _item_text(prompt) for prompt in prompts]
    texts = [base if j == 0 else f"{base} #{j}" for base in bases for j in range(n)]
    choices = [{"text": text, "index": k, "logprobs": None} for k, text in enumerate(texts)]
    usage = _usage(sum(_item_tokens(p) for p in prompts), sum(_words(t) for t in texts))
    head = {
        "id": f"cmpl-{digest}",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    async with state.admission(len(prompts)):
        if not payload.get("stream"):
            done = [{**c, "finish_reason": "stop"} for c in choices]
            return _json_response({**head, "choices": done, "usage": usage}, digest)
        events = _completion_events(head, choices, usage, _include_usage(payload))
        return await _stream(request, state, events, digest)


def _completion_events(
    head: dict[str, Any],
    choices: list[dict[str, Any]],
    usage: dict[str, int],
    include_usage: bool,
) -> list[bytes]:
    """One chunk per choice text, then the usage chunk if asked for, then [DONE]."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    events = [_sse({**head, "choices": [{**c, "finish_reason": "stop"}], **extra}) for c in choices]
    if include_usage:
        events.append(_sse({**head, "choices": [], "usage": usage}))
    events.append(_DONE)
    return events


# --- embeddings and moderations ----------------------------------------------------------------


def _vector(canonical: bytes, dimensions: int) -> tuple[float, ...]:
    """Deterministic values in [-1, 1), exactly representable as float32 (so that the float and
    base64 encodings decode to the same numbers)."""
    raw = hashlib.shake_256(canonical).digest(2 * dimensions)
    return tuple(k / 32768 - 1.0 for k in struct.unpack(f"<{dimensions}H", raw))


def _embedding(item: str | list[int], dimensions: int, as_base64: bool) -> list[float] | str:
    vector = _vector(orjson.dumps(item), dimensions)
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return list(vector)


async def _embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    payload = _load(body)
    model = _model(state, payload)
    items = _items(payload.get("input"), "input")
    state.inputs[request.path] += len(items)
    dimensions = _positive_int(payload, "dimensions", DEFAULT_DIMENSIONS, MAX_DIMENSIONS)
    as_base64 = payload.get("encoding_format") == "base64"
    async with state.admission(len(items)):
        if any(isinstance(item, str) and "TOO_LONG" in item for item in items):
            raise OpenAIError(
                400,
                "This model's maximum context length is 8192 tokens",
                param="input",
                code="context_length_exceeded",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(it, dimensions, as_base64)}
            for i, it in enumerate(items)
        ]
        tokens = sum(_item_tokens(item) for item in items)
        reply = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _json_response(reply, _digest(body))


_MODERATION_RESULT = {
    "flagged": False,
    "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
    "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
}


async def _moderations(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    payload = _load(body)
    value = payload.get("input")
    items = value if isinstance(value, list) and value else [value]
    state.inputs[request.path] += len(items)
    digest = _digest(body)
    async with state.admission(len(items)):
        reply = {
            "id": f"modr-{digest}",
            "model": payload.get("model") or "omni-moderation-latest",
            "results": [_MODERATION_RESULT] * len(items),
        }
        return _json_response(reply, digest)


async def _speech(request: web.Request) -> web.StreamResponse:
    """Binary "audio": a fixed header, the request's hash and every byte value (bytes that are
    not UTF-8 among them), so that a body stored as text would show."""
    body = await request.read()
    digest = _digest(body)
    async with request.app[STATE].admission():
        audio = b"ID3\x04\x00" + hashlib.sha256(body).digest() + bytes(range(256))
        headers = _headers(digest, {**_STATIC_HEADERS, "Content-Type": "audio/mpeg"})
        return web.Response(body=audio, headers=headers)


# --- responses ---------------------------------------------------------------------------------
#
# `POST /v1/responses` answers a Response object, or with `stream: true` the typed event stream
# (`event: <type>` + `data: {...}`, every event with `type` and `sequence_number`), shaped as the
# `openai` SDK's `types/responses` models. The output is a message "echo: <last input text>", or
# a `get_weather` function call when tools are given and the text mentions the weather. Created
# responses are kept (unless `store: false`) for GET/DELETE/cancel/input_items. Magic words in
# the input steer the outcome: RESPONSES_FAILED_WORD ends in `failed` (a stream in
# `response.failed`), RESPONSES_INCOMPLETE_WORD in `incomplete`, RESPONSES_ERROR_WORD makes a
# stream end with an `error` event. `background: true` answers `queued`; the response completes
# when it is first retrieved (or is cancelled before).

RESPONSES_FAILED_WORD = "RESPONSE_FAILED"
RESPONSES_INCOMPLETE_WORD = "RESPONSE_INCOMPLETE"
RESPONSES_ERROR_WORD = "RESPONSE_ERROR"
#: Stored responses kept at most (the oldest go first): benchmarks send millions of requests.
MAX_STORED_RESPONSES = 10_000


@dataclass
class _StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    #: The response once it has run (a background one is `queued` until retrieved).
    final: dict[str, Any]


def _input_items(payload: dict[str, Any], digest: str) -> list[dict[str, Any]]:
    value = payload.get("input")
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise OpenAIError(400, "'input' must be a string or a non-empty array", param="input")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise OpenAIError(400, f"Invalid value for 'input[{i}]'", param=f"input[{i}]")
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        item.setdefault("id", f"{'msg' if item['type'] == 'message' else 'item'}_{digest}{i}")
        item.setdefault("status", "completed")
        items.append(item)
    return items


def _item_words(item: dict[str, Any]) -> str:
    if item["type"] == "function_call_output":
        return str(item.get("output", ""))
    return _text(item.get("content"))


def _response_tools(payload: dict[str, Any]) -> list[dict[str, Any]]:
    tools = payload.get("tools") or []
    if not isinstance(tools, list):
        raise OpenAIError(400, "'tools' must be an array", param="tools")
    return [
        {"description": None, "strict": True, **t} if t.get("type") == "function" else t
        for t in tools
        if isinstance(t, dict)
    ]


def _response_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass(frozen=True)
class _ResponseRun:
    """What one `POST /v1/responses` produces, computed once per request."""

    head: dict[str, Any]  # the Response object without status, output and usage
    item: dict[str, Any]  # the one output item, completed
    usage: dict[str, Any]
    outcome: str  # completed | failed | incomplete | error


def _response_run(
    stored: dict[str, _StoredResponse], payload: dict[str, Any], model: str, digest: str
) -> tuple[_ResponseRun, list[dict[str, Any]]]:
    items = _input_items(payload, digest)
    texts = [_item_words(item) for item in items]
    last = texts[-1]
    previous = payload.get("previous_response_id")
    turn = 1
    if previous is not None:
        before = stored.get(previous) if isinstance(previous, str) else None
        if before is None:
            raise OpenAIError(
                404,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        turn = int(before.final["metadata"].get("fake_turn", "1")) + 1
    tools = _response_tools(payload)
    if tools and "weather" in last.lower():
        function = next((t["name"] for t in tools if t.get("type") == "function"), TOOL_NAME)
        item: dict[str, Any] = {
            "id": f"fc_{digest}",
            "type": "function_call",
            "status": "completed",
            "call_id": f"call_{digest[:16]}",
            "name": function,
            "arguments": TOOL_ARGUMENTS,
        }
        out_words = _words(TOOL_ARGUMENTS)
    else:
        text = f"echo: {last}" if turn == 1 else f"echo: {last} (turn {turn})"
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {
            "id": f"msg_{digest}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        out_words = _words(text)
    conversation = payload.get("conversation")
    if isinstance(conversation, str):
        conversation = {"id": conversation}
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    head = {
        "id": f"resp_{digest}",
        "object": "response",
        "created_at": CREATED,
        "background": bool(payload.get("background")),
        "completed_at": None,
        "conversation": conversation,
        "error": None,
        "incomplete_details": None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": payload.get("max_output_tokens"),
        "metadata": {**metadata, "fake_turn": str(turn)},
        "model": model,
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "previous_response_id": previous,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": payload.get("store", True) is not False,
        "temperature": payload.get("temperature", 1.0),
        "text": payload.get("text") or {"format": {"type": "text"}},
        "tool_choice": payload.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": payload.get("top_p", 1.0),
        "truncation": payload.get("truncation", "disabled"),
        "user": payload.get("user"),
    }
    outcome = "completed"
    for word, name in (
        (RESPONSES_FAILED_WORD, "failed"),
        (RESPONSES_INCOMPLETE_WORD, "incomplete"),
        (RESPONSES_ERROR_WORD, "error"),
    ):
        if word in last:
            outcome = name
    usage = _response_usage(sum(_words(t) for t in texts), out_words)
    return _ResponseRun(head, item, usage, outcome), items


def _response_state(run: _ResponseRun, status: str) -> dict[str, Any]:
    """The Response object in `status` (`in_progress`/`queued`: no output yet)."""
    obj = {**run.head, "status": status, "output": [], "usage": None}
    if status == "completed":
        obj.update(output=[run.item], usage=run.usage, completed_at=CREATED)
    elif status == "failed":
        error = {"code": "server_error", "message": "The fake upstream failed this response."}
        obj["error"] = error
    elif status == "incomplete":
        obj.update(
            output=[{**run.item, "status": "incomplete"}],
            usage=run.usage,
            incomplete_details={"reason": "max_output_tokens"},
        )
    return obj


def _response_final(run: _ResponseRun) -> dict[str, Any]:
    return _response_state(run, "completed" if run.outcome == "error" else run.outcome)


def _response_events(run: _ResponseRun) -> list[bytes]:
    """The typed event stream of one response, as SSE."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_state(run, "in_progress")},
        {"type": "response.in_progress", "response": _response_state(run, "in_progress")},
    ]
    if run.outcome == "error":
        events.append(
            {
                "type": "error",
                "code": "server_error",
                "message": "The fake upstream broke this stream.",
                "param": None,
            }
        )
    else:
        events.extend(_item_events(run, partial=run.outcome == "failed"))
        final = _response_final(run)
        events.append({"type": f"response.{run.outcome}", "response": final})
    return [
        b"event: %s\ndata: %s\n\n"
        % (event["type"].encode(), orjson.dumps({**event, "sequence_number": n}))
        for n, event in enumerate(events)
    ]


def _item_events(run: _ResponseRun, *, partial: bool) -> list[dict[str, Any]]:
    """`output_item.added` ... `output_item.done` for the one output item (`partial`: stop after
    the first delta, as a response that fails half way does)."""
    item, where = run.item, {"item_id": run.item["id"], "output_index": 0}
    status = "incomplete" if run.outcome == "incomplete" else "completed"
    done = {**item, "status": status}
    if item["type"] == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        pieces = _pieces(item["arguments"])[: 1 if partial else None]
        events = [{"type": "response.output_item.added", "output_index": 0, "item": added}]
        events += [
            {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            for piece in pieces
        ]
        if partial:
            return events
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "arguments": item["arguments"],
            }
        )
        events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
        return events
    part = item["content"][0]
    added = {**item, "status": "in_progress", "content": []}
    at = {**where, "content_index": 0}
    pieces = _pieces(part["text"])[: 1 if partial else None]
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": added},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
    ]
    events += [
        {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
        for piece in pieces
    ]
    if partial:
        return events
    return [
        *events,
        {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": done},
    ]


STORED_RESPONSES = web.AppKey("fake_responses", dict[str, _StoredResponse])


async def _responses(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    stored = request.app[STORED_RESPONSES]
    body = await request.read()
    payload = _load(body)
    model = _model(state, payload)
    digest = _digest(body)
    run, items = _response_run(stored, payload, model, digest)
    background = bool(payload.get("background"))
    if background and payload.get("stream"):
        raise OpenAIError(400, "The fake upstream does not stream background responses")
    async with state.admission():
        final = _response_final(run)
        if payload.get("store", True) is not False:
            first = _response_state(run, "queued") if background else final
            stored[run.head["id"]] = _StoredResponse(first, items, final)
            if len(stored) > MAX_STORED_RESPONSES:
                del stored[next(iter(stored))]
        if background:
            return _json_response(_response_state(run, "queued"), digest)
        if payload.get("stream"):
            return await _stream(request, state, _response_events(run), digest)
        return _json_response(final, digest)


def _stored(request: web.Request) -> _StoredResponse:
    response_id = request.match_info["response_id"]
    found = request.app[STORED_RESPONSES].get(response_id)
    if found is None:
        raise OpenAIError(404, f"No response found with id '{response_id}'.", param="response_id")
    return found


async def _get_response(request: web.Request) -> web.StreamResponse:
    found = _stored(request)
    if found.response["status"] == "queued":  # a background response runs when first asked
        found.response = found.final
    return _json_response(found.response, _digest(request.path.encode()))


async def _delete_response(request: web.Request) -> web.StreamResponse:
    found = _stored(request)
    response_id = found.response["id"]
    del request.app[STORED_RESPONSES][response_id]
    reply = {"id": response_id, "object": "response.deleted", "deleted": True}
    return _json_response(reply, _digest(request.path.encode()))


async def _cancel_response(request: web.Request) -> web.StreamResponse:
    found = _stored(request)
    if not found.response.get("background"):
        raise OpenAIError(400, "Only responses created with background=true can be cancelled.")
    if found.response["status"] == "queued":
        found.response = found.final = {**found.response, "status": "cancelled"}
    return _json_response(found.response, _digest(request.path.encode()))


async def _response_input_items(request: web.Request) -> web.StreamResponse:
    items = _stored(request).input_items
    if request.query.get("order", "desc") == "desc":
        items = items[::-1]
    reply = {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }
    return _json_response(reply, _digest(request.path.encode()))


def _add_responses_routes(app: web.Application) -> None:
    app[STORED_RESPONSES] = {}
    router = app.router
    one = "/v1/responses/{response_id}"
    router.add_post("/v1/responses", _responses)
    router.add_get(one, _get_response, allow_head=False)
    router.add_delete(one, _delete_response)
    router.add_post(one + "/cancel", _cancel_response)
    router.add_get(one + "/input_items", _response_input_items, allow_head=False)


# --- models, echo, controls --------------------------------------------------------------------


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "fake"}


async def _list_models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    async with state.admission():
        reply = {"object": "list", "data": [_model_object(m) for m in state.models]}
        return _json_response(reply, _digest(b"models"))


async def _get_model(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    model = request.match_info["model"]
    async with state.admission():
        if model not in state.models:
            raise OpenAIError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        return _json_response(_model_object(model), _digest(model.encode()))


async def _echo(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    async with state.admission():
        reply = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body_bytes": len(body),
            "content_type": request.headers.get("Content-Type"),
        }
        return _json_response(reply, _digest(body))


async def _stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE].stats())


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


# --- plumbing ----------------------------------------------------------------------------------


async def _stream(
    request: web.Request, state: FakeState, events: list[bytes], digest: str
) -> web.StreamResponse:
    """Write each SSE event separately, `chunk_delay_ms` apart, holding after the first one
    while `stream_gate` is set and not yet open."""
    response = web.StreamResponse(headers=_headers(digest, _SSE_HEADERS))
    delay_s = state.chunk_delay_ms / 1000
    try:
        await response.prepare(request)
        for i, event in enumerate(events):
            if i == 1 and state.stream_gate is not None:
                await _wait_gate(request, state.stream_gate)
            if i and delay_s > 0:
                await asyncio.sleep(delay_s)
            await response.write(event)
        await response.write_eof()
    except asyncio.CancelledError:
        state.cancelled_streams += 1
        raise
    except ConnectionResetError:
        state.cancelled_streams += 1
        return response
    state.completed_streams += 1
    return response


async def _wait_gate(request: web.Request, gate: asyncio.Event) -> None:
    # Poll the transport too: a client that goes away while we hold must count as cancelled
    # without waiting for the gate to open.
    while not gate.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away while the stream was gated")
        try:
            async with asyncio.timeout(_GATE_POLL_S):
                await gate.wait()
        except TimeoutError:
            pass


async def _answer_scripted(scripted: Scripted) -> web.Response:
    if scripted.delay_ms > 0:
        await asyncio.sleep(scripted.delay_ms / 1000)
    body = scripted.body
    headers = CIMultiDict(scripted.headers)
    headers.setdefault("Content-Type", _JSON)
    return web.Response(
        status=scripted.status,
        body=orjson.dumps(body) if isinstance(body, dict) else body,
        headers=headers,
    )


@web.middleware
async def _bookkeeping(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count, record and track every /v1 request; answer scripted replies and OpenAI errors."""
    path = request.path
    if not path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE]
    state.calls[path] += 1
    state.in_flight += 1
    if state.in_flight > state.max_in_flight:
        state.max_in_flight = state.in_flight
    try:
        body = await request.read()
        if state.record_requests:
            state.requests.append(
                RecordedRequest(
                    request.method, path, dict(request.query), dict(request.headers), body
                )
            )
        scripted = state.take_scripted(path) if state.script else None
        if scripted is not None:
            return await _answer_scripted(scripted)
        return await handler(request)
    except OpenAIError as exc:
        return exc.response()
    finally:
        state.in_flight -= 1


def create_fake_upstream(
    *,
    latency_ms: float = 0.0,
    per_input_ms: float = 0.0,
    max_concurrency: int | None = None,
    chunk_delay_ms: float = 0.0,
    models: list[str] | None = None,
    record_requests: bool = True,
) -> web.Application:
    """Build the fake upstream app; its `FakeState` is `app[STATE]`."""
    app = web.Application(middlewares=[_bookkeeping], client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeState(
        latency_ms=latency_ms,
        per_input_ms=per_input_ms,
        max_concurrency=max_concurrency,
        chunk_delay_ms=chunk_delay_ms,
        models=list(models) if models is not None else list(DEFAULT_MODELS),
        record_requests=record_requests,
    )
    router = app.router
    router.add_post("/v1/chat/completions", _chat)
    router.add_post("/v1/completions", _completions)
    router.add_post("/v1/embeddings", _embeddings)
    router.add_post("/v1/moderations", _moderations)
    router.add_post("/v1/audio/speech", _speech)
    router.add_get("/v1/models", _list_models, allow_head=False)
    router.add_get("/v1/models/{model:.+}", _get_model, allow_head=False)
    _add_responses_routes(app)
    router.add_route("*", "/v1/{tail:.*}", _echo)
    router.add_get("/_fake/stats", _stats)
    router.add_post("/_fake/reset", _reset)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--per-input-ms", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--models", help="comma-separated model ids (default: the built-in list)")
    parser.add_argument(
        "--record-requests",
        action="store_true",
        help="keep every request in memory (off by default here: benchmarks send millions)",
    )
    args = parser.parse_args(argv)
    app = create_fake_upstream(
        latency_ms=args.latency_ms,
        per_input_ms=args.per_input_ms,
        max_concurrency=args.max_concurrency,
        chunk_delay_ms=args.chunk_delay_ms,
        models=args.models.split(",") if args.models else None,
        record_requests=args.record_requests,
    )
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        loop=loop_factory(),
    )


if __name__ == "__main__":
    main()
