"""Explicit request limits, checked at the door before anything goes upstream.

Each has a default that follows OpenAI's documented limit where there is one (2,048 inputs per
embeddings request); the others are generous bounds that no real request reaches but that keep a
hostile one from costing the proxy (and the upstream) work: nesting depth and messages.
"""

from __future__ import annotations

from typing import Any

from .config import LimitsSettings
from .errors import InvalidRequest

__all__ = ["check_limits"]


def check_limits(path: str, body: bytes, data: dict[str, Any], limits: LimitsSettings) -> None:
    """Refuse a request body past the configured limits with a 400 naming the limit."""
    _check_depth(body, data, limits.max_json_depth)
    _check_length(data, "messages", limits.max_messages)
    # The Responses API's ``input`` is a conversation's items, bounded like messages.
    conversation = path.endswith("/responses")
    _check_length(data, "input", limits.max_messages if conversation else limits.max_inputs)


def _check_length(data: dict[str, Any], field: str, limit: int) -> None:
    value = data.get(field)
    if isinstance(value, list) and len(value) > limit:
        raise InvalidRequest(
            f"'{field}' has {len(value)} items, more than the limit of {limit}",
            param=field,
            code="array_above_max_length",
        )


def _check_depth(body: bytes, data: dict[str, Any], limit: int) -> None:
    # A body with no more brackets than the limit cannot nest deeper: the usual case costs two
    # C-speed counts instead of a walk.
    if body.count(b"{") + body.count(b"[") <= limit:
        return
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise InvalidRequest(
                f"The request body nests deeper than the limit of {limit} levels",
                code="json_too_deep",
            )
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
