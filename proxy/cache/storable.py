"""What the cache may store: a complete, well-formed answer of its route, never a broken one.

A 2xx status is not enough: a server or a gateway in between can answer 200 with an HTML page,
a body cut short (with a matching ``Content-Length``), an error object, or a stream with a line
that does not parse. Such an answer is passed on to the client that asked, but repeating it to
others would turn one failure into many.

Each route has a :class:`Rule`: what its JSON answer looks like, and how its stream ends. Routes
outside :data:`RULES` get :data:`DEFAULT`: any JSON object, streams ending with ``[DONE]``. A
route whose stream ends differently has its own rule, as the Responses API does (its stream ends
with a ``response.completed`` event that carries the whole, completed Response).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .forms import parse_events

__all__ = [
    "DEFAULT",
    "RULES",
    "Rule",
    "is_completed_response",
    "storable_json",
    "storable_stream",
]

Object = dict[str, Any]


def _any_object(obj: Object) -> bool:
    return True


def _ends_with_done(events: list[Object], done: bool) -> bool:
    return done


def _has_list(name: str) -> Callable[[Object], bool]:
    def check(obj: Object) -> bool:
        return isinstance(obj.get(name), list)

    return check


@dataclass(frozen=True, slots=True)
class Rule:
    """How one route's answers look when they are whole."""

    #: Whether a parsed JSON answer is this route's object.
    is_answer: Callable[[Object], bool] = _any_object
    #: Whether a stream is complete, from its events (every ``data`` parsed, ``[DONE]`` left
    #: out) and whether the last one was ``[DONE]``.
    is_complete: Callable[[list[Object], bool], bool] = _ends_with_done


def is_completed_response(obj: Any) -> bool:
    """A whole Responses API answer: a Response object whose status is ``completed``."""
    return (
        isinstance(obj, dict)
        and obj.get("status") == "completed"
        and obj.get("error") is None
        and isinstance(obj.get("id"), str)
    )


_UNFINISHED = frozenset({"response.failed", "response.incomplete", "error"})


def _response_stream_completed(events: list[Object], done: bool) -> bool:
    if not events or events[-1].get("type") != "response.completed":
        return False
    if any(event.get("type") in _UNFINISHED for event in events):
        return False
    return is_completed_response(events[-1].get("response"))


DEFAULT = Rule()
#: Rules by path; a path not listed gets :data:`DEFAULT`.
RULES: dict[str, Rule] = {
    "/v1/chat/completions": Rule(is_answer=_has_list("choices")),
    "/v1/completions": Rule(is_answer=_has_list("choices")),
    "/v1/embeddings": Rule(is_answer=_has_list("data")),
    "/v1/moderations": Rule(is_answer=_has_list("results")),
    "/v1/responses": Rule(is_answer=is_completed_response, is_complete=_response_stream_completed),
}


def _is_error(obj: Object) -> bool:
    # Some servers report a failure as a top-level ``error`` object in a 2xx answer.
    return obj.get("error") is not None


def storable_json(path: str, body: bytes) -> bool:
    """Whether a 2xx JSON answer to ``path`` may be stored: it parses as the route's object."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    rule = RULES.get(path, DEFAULT)
    return isinstance(obj, dict) and not _is_error(obj) and rule.is_answer(obj)


def storable_stream(path: str, payload: bytes) -> bool:
    """Whether a recorded 2xx stream to ``path`` may be stored: every ``data`` line parses as a
    JSON object (``[DONE]`` aside), none is an error, and the stream ended as its route ends."""
    datas = parse_events(payload)
    done = bool(datas) and datas[-1].strip() == b"[DONE]"
    if done:
        datas = datas[:-1]
    events: list[Object] = []
    for data in datas:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict) or _is_error(obj):
            return False
        events.append(obj)
    return RULES.get(path, DEFAULT).is_complete(events, done)
