"""A fast, deterministic OpenAI-compatible fake upstream, for the test suite and the benchmarks.

Every answer is a pure function of the request: ids are derived from a hash of the request body
and `created` is fixed, so a reply through the proxy can be compared byte for byte with a direct
one. Tests steer and inspect it through `app[STATE]` (a `FakeState`).

Routes, all under `/v1`: `POST chat/completions`, `POST completions`, `POST embeddings`,
`POST moderations`, `POST audio/speech` (binary audio bytes), `GET models`, `GET models/{id}`;
any other `/v1/...` request gets a JSON echo
of what arrived. `GET /_fake/stats` and `POST /_fake/reset` are out-of-band controls for the
benchmark runner; they are not counted or recorded.

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
