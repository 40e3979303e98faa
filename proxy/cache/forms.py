"""One answer, two forms: a recorded SSE stream becomes one JSON object, and a JSON answer
becomes an SSE stream, for chat completions and (legacy) completions.

Both directions keep what the ``openai`` SDK reads: ids, model, content, refusal, tool calls,
finish reasons, logprobs and usage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "CONVERTIBLE",
    "DONE",
    "assemble",
    "ends_with_usage",
    "parse_events",
    "strip_usage",
    "synthesize",
]

DONE = b"data: [DONE]\n\n"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
#: Routes whose answers can be served in either form.
CONVERTIBLE = frozenset({CHAT, COMPLETIONS})
_HEAD_FIELDS = ("system_fingerprint", "service_tier")


def _data_lines(block: bytes) -> bytes | None:
    data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def parse_events(raw: bytes) -> list[bytes]:
    """The ``data`` payloads of an SSE text, in order (``[DONE]`` included)."""
    text = raw.replace(b"\r\n", b"\n")
    return [d for block in text.split(b"\n\n") if (d := _data_lines(block)) is not None]


def ends_with_usage(raw: bytes) -> bool:
    """Whether the last event before ``[DONE]`` carries usage (``include_usage`` was honoured)."""
    tail = raw[-4096:] if len(raw) > 4096 else raw
    events = [e for e in parse_events(tail) if e.strip() != b"[DONE]"]
    if not events:
        return False
    try:
        last = orjson.loads(events[-1])
    except orjson.JSONDecodeError:
        return False
    return isinstance(last, dict) and last.get("usage") is not None


def _objects(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for data in parse_events(raw):
        if data.strip() == b"[DONE]":
            break
        obj = orjson.loads(data)
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


# --- stream -> one object ------------------------------------------------------------------------


def assemble(path: str, raw: bytes) -> bytes | None:
    """The JSON answer equivalent to the recorded stream ``raw``; ``None`` if it has no usage or
    does not parse (then the cache treats it as a miss)."""
    try:
        events = _objects(raw)
    except orjson.JSONDecodeError:
        return None
    usage = next((e["usage"] for e in reversed(events) if e.get("usage")), None)
    if not events or usage is None:
        return None
    first = events[0]
    choices = _chat_choices(events) if path == CHAT else _completion_choices(events)
    body: dict[str, Any] = {
        "id": first.get("id"),
        "object": "chat.completion" if path == CHAT else "text_completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": choices,
        "usage": usage,
    }
    for name in _HEAD_FIELDS:
        value = next((e[name] for e in events if e.get(name) is not None), None)
        if value is not None:
            body[name] = value
    return orjson.dumps(body)


def _choice_deltas(events: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    by_index: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        for choice in event.get("choices") or ():
            by_index.setdefault(int(choice.get("index", 0)), []).append(choice)
    return dict(sorted(by_index.items()))


def _chat_choices(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_chat_choice(i, parts) for i, parts in _choice_deltas(events).items()]


def _chat_choice(index: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
    role, finish = "assistant", None
    content: list[str] | None = None
    refusal: list[str] | None = None
    tools: dict[int, dict[str, Any]] = {}
    function: dict[str, str] | None = None  # the legacy ``functions`` API
    logprobs: dict[str, Any] | None = None
    for part in parts:
        delta = part.get("delta") or {}
        role = delta.get("role") or role
        if delta.get("content") is not None:
            content = (content or []) + [delta["content"]]
        if delta.get("refusal") is not None:
            refusal = (refusal or []) + [delta["refusal"]]
        for call in delta.get("tool_calls") or ():
            _merge_tool_call(tools, call)
        if delta.get("function_call"):
            function = function or {"name": "", "arguments": ""}
            _append_function(function, delta["function_call"])
        logprobs = _merge_logprobs(logprobs, part.get("logprobs"))
        finish = part.get("finish_reason") or finish
    message: dict[str, Any] = {
        "role": role,
        "content": None if content is None else "".join(content),
        "refusal": None if refusal is None else "".join(refusal),
    }
    if tools:
        message["tool_calls"] = [tools[i] for i in sorted(tools)]
    if function is not None:
        message["function_call"] = function
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def _merge_logprobs(into: dict[str, Any] | None, part: Any) -> dict[str, Any] | None:
    """Logprobs of one more chunk appended; a list that is ``null`` in every chunk (chat's
    ``refusal``, say) stays ``null``, as in the answer the stream was cut from."""
    if not isinstance(part, dict) or not part:
        return into
    into = {} if into is None else into
    for name, values in part.items():
        if isinstance(values, list):
            into[name] = (into.get(name) or []) + values
        else:
            into.setdefault(name, values)
    return into


def _append_function(function: dict[str, str], part: dict[str, Any]) -> None:
    for name in ("name", "arguments"):
        if part.get(name):
            function[name] += part[name]


def _merge_tool_call(tools: dict[int, dict[str, Any]], part: dict[str, Any]) -> None:
    slot = tools.setdefault(
        int(part.get("index", 0)),
        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
    )
    if part.get("id"):
        slot["id"] = part["id"]
    if part.get("type"):
        slot["type"] = part["type"]
    function = part.get("function") or {}
    if function.get("name"):
        slot["function"]["name"] += function["name"]
    if function.get("arguments"):
        slot["function"]["arguments"] += function["arguments"]


def _completion_choices(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    choices = []
    for index, parts in _choice_deltas(events).items():
        text = "".join(p.get("text") or "" for p in parts)
        finish = next((p["finish_reason"] for p in reversed(parts) if p.get("finish_reason")), None)
        logprobs: dict[str, Any] | None = None
        for part in parts:
            logprobs = _merge_logprobs(logprobs, part.get("logprobs"))
        choices.append(
            {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        )
    return choices


# --- one object -> stream ------------------------------------------------------------------------


def synthesize(path: str, body: bytes, *, include_usage: bool) -> list[bytes] | None:
    """SSE chunks equivalent to the JSON answer ``body``, ending with ``[DONE]``; ``None`` if it
    does not parse."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return None
    chat = path == CHAT
    head: dict[str, Any] = {
        "id": obj.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": obj.get("created"),
        "model": obj.get("model"),
    }
    for name in _HEAD_FIELDS:
        if obj.get(name) is not None:
            head[name] = obj[name]
    if include_usage:
        head["usage"] = None
    make = _chat_chunks if chat else _completion_chunks
    events = [_sse({**head, "choices": [c]}) for c in make(obj["choices"])]
    if include_usage and obj.get("usage") is not None:
        events.append(_sse({**head, "choices": [], "usage": obj["usage"]}))
    events.append(DONE)
    return events


def _chat_chunks(choices: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for choice in choices:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {
            "role": message.get("role", "assistant"),
            "content": message.get("content"),
        }
        if message.get("refusal") is not None:
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": j, **t} for j, t in enumerate(message["tool_calls"])]
        if message.get("function_call"):
            delta["function_call"] = message["function_call"]
        yield {
            "index": index,
            "delta": delta,
            "logprobs": choice.get("logprobs"),
            "finish_reason": None,
        }
        yield {
            "index": index,
            "delta": {},
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
        }


def _completion_chunks(choices: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for choice in choices:
        yield {
            "text": choice.get("text", ""),
            "index": choice.get("index", 0),
            "logprobs": choice.get("logprobs"),
            "finish_reason": choice.get("finish_reason"),
        }


def strip_usage(chunks: list[bytes]) -> list[bytes] | None:
    """A recorded stream that carried usage, as a client that did not ask for it would get it:
    without the usage chunk and without ``"usage": null``. ``None`` if it does not parse."""
    try:
        events = _objects(b"".join(chunks))
    except orjson.JSONDecodeError:
        return None
    out = []
    for event in events:
        if not event.get("choices") and event.get("usage") is not None:
            continue
        event.pop("usage", None)
        out.append(_sse(event))
    out.append(DONE)
    return out
