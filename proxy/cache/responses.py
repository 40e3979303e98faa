"""The Responses API (``POST /v1/responses``) in the cache: what may be stored, and its two forms.

A stream of typed events (``event: response.created`` ... ``event: response.completed``) ends
with the whole Response object, so a recorded stream answers a JSON request with that object. A
JSON answer is rendered as the event sequence the ``openai`` SDK's stream parser accepts when its
output is messages (text and refusals) and function calls; anything else (reasoning, built-in
tools, annotations) is a miss rather than a stream that leaves something out.

Only finished work is stored (the route's rule in :mod:`.storable`): a JSON Response whose
``status`` is ``completed``, a stream whose last event is ``response.completed`` and that has no
``response.failed``, ``response.incomplete`` or ``error`` event. ``background: true`` requests
answer ``queued``, not a result: they are never cached or shared (:func:`is_background`).
"""

from __future__ import annotations

from typing import Any

import orjson

from .forms import parse_events
from .storable import is_completed_response

__all__ = ["RESPONSES", "is_background", "render_events", "to_json"]

RESPONSES = "/v1/responses"
_COMPLETED = "response.completed"


def is_background(data: dict[str, Any]) -> bool:
    """A request that starts a background response (answered ``queued``)."""
    return data.get("background") is True


def _events(raw: bytes) -> list[dict[str, Any]] | None:
    """Every event of a recorded stream, or ``None`` if one does not parse as an object."""
    out = []
    for data in parse_events(raw):
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        out.append(event)
    return out


def to_json(raw: bytes) -> bytes | None:
    """The JSON answer a recorded stream stands for: its ``response.completed`` object."""
    events = _events(raw)
    if not events or events[-1].get("type") != _COMPLETED:
        return None
    response = events[-1].get("response")
    return orjson.dumps(response) if is_completed_response(response) else None


# --- one object -> events ------------------------------------------------------------------------


def render_events(body: bytes) -> list[bytes] | None:
    """The event stream equivalent to the JSON Response ``body``, as SSE chunks (one event
    each); ``None`` when it cannot be rendered faithfully."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not is_completed_response(obj) or not isinstance(obj.get("output"), list):
        return None
    starting = {**obj, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in obj:
        starting["completed_at"] = None
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": starting},
        {"type": "response.in_progress", "response": starting},
    ]
    for index, item in enumerate(obj["output"]):
        rendered = _item_events(index, item)
        if rendered is None:
            return None
        events.extend(rendered)
    events.append({"type": _COMPLETED, "response": obj})
    return [
        b"event: %s\ndata: %s\n\n"
        % (event["type"].encode(), orjson.dumps({**event, "sequence_number": n}))
        for n, event in enumerate(events)
    ]


def _item_events(index: int, item: Any) -> list[dict[str, Any]] | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    if item.get("type") == "message":
        return _message_events(index, item)
    if item.get("type") == "function_call":
        return _function_call_events(index, item)
    return None


def _message_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]] | None:
    parts = item.get("content")
    if not isinstance(parts, list):
        return None
    added = {**item, "status": "in_progress", "content": []}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": index, "item": added}
    ]
    for j, part in enumerate(parts):
        at = {"item_id": item["id"], "output_index": index, "content_index": j}
        rendered = _part_events(at, part)
        if rendered is None:
            return None
        events += rendered
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def _part_events(at: dict[str, Any], part: Any) -> list[dict[str, Any]] | None:
    """One content part: ``output_text`` (without annotations, which have events of their own)
    or ``refusal``."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "output_text" and isinstance(part.get("text"), str) and not part.get("annotations"):
        text, logprobs = part["text"], part.get("logprobs") or []
        middle = [
            {"type": "response.output_text.delta", **at, "delta": text, "logprobs": logprobs},
            {"type": "response.output_text.done", **at, "text": text, "logprobs": logprobs},
        ]
        empty = {**part, "text": ""}
    elif kind == "refusal" and isinstance(part.get("refusal"), str):
        refusal = part["refusal"]
        middle = [
            {"type": "response.refusal.delta", **at, "delta": refusal},
            {"type": "response.refusal.done", **at, "refusal": refusal},
        ]
        empty = {**part, "refusal": ""}
    else:
        return None
    return [
        {"type": "response.content_part.added", **at, "part": empty},
        *middle,
        {"type": "response.content_part.done", **at, "part": part},
    ]


def _function_call_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]] | None:
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        return None
    at = {"item_id": item["id"], "output_index": index}
    added = {**item, "status": "in_progress", "arguments": ""}
    return [
        {"type": "response.output_item.added", "output_index": index, "item": added},
        {"type": "response.function_call_arguments.delta", **at, "delta": arguments},
        {"type": "response.function_call_arguments.done", **at, "arguments": arguments},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
