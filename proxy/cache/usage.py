"""Every recorded chat/completions stream carries usage, whatever its client asked for.

A JSON answer must carry ``usage``, and the cache never makes it up, so a stream recorded without
it could only ever serve streams. So when a client streams without
``stream_options.include_usage``, the call goes upstream with it (:func:`ask_for_usage`; the cache
key ignores ``stream_options``), the stream is recorded as it comes, and the client's copy loses
what the option added (:func:`without_usage`): the usage-only final chunk and the ``"usage": null``
field of every other chunk. An upstream that refuses ``stream_options`` opts out with
``stream_usage: false``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..call import Call
from .forms import CONVERTIBLE

__all__ = ["ask_for_usage", "include_usage", "strip_block", "without_usage"]

_USAGE = b'"usage"'
_SEPARATOR = re.compile(rb"(\r\n\r\n|\n\n)")


def include_usage(call: Call) -> bool:
    """Whether the client asked for usage in its stream."""
    options = (call.json or {}).get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def ask_for_usage(call: Call) -> Call:
    """``call`` asking the upstream for usage, when its client did not and the upstream may be
    asked; otherwise ``call`` itself (the caller compares to know whether to strip)."""
    if not call.stream or call.path not in CONVERTIBLE or call.json is None:
        return call
    if not call.upstream.settings.stream_usage or include_usage(call):
        return call
    options = call.json.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return call  # the client's own mistake: the upstream answers for it, unchanged
    data = {**call.json, "stream_options": {**(options or {}), "include_usage": True}}
    return call.with_body(data, orjson.dumps(data))


async def without_usage(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``source`` as the client would have got it without ``include_usage``.

    Complete events are passed on as soon as they are in (the rest of a chunk waits for the end
    of its event); events that carry no usage field pass byte for byte.
    """
    pending = b""
    async for chunk in source:
        pending += chunk
        cut = _last_boundary(pending)
        if cut == 0:
            continue
        block, pending = pending[:cut], pending[cut:]
        out = strip_block(block)
        if out:
            yield out
    if pending:
        out = strip_block(pending)
        if out:
            yield out


def _last_boundary(buffer: bytes) -> int:
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def strip_block(block: bytes) -> bytes:
    """Whole SSE events without the usage chunk and ``usage`` fields."""
    if _USAGE not in block:
        return block
    parts = _SEPARATOR.split(block)  # event, separator, event, separator, ..., rest
    out: list[bytes] = []
    for i in range(0, len(parts), 2):
        event = parts[i]
        separator = parts[i + 1] if i + 1 < len(parts) else b""
        if _USAGE in event:
            stripped = _strip_event(event)
            if stripped is None:
                continue  # the usage-only chunk: gone with its separator
            event = stripped
        out.append(event + separator)
    return b"".join(out)


def _strip_event(event: bytes) -> bytes | None:
    eol = b"\r\n" if b"\r\n" in event else b"\n"
    lines = event.split(eol)
    data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
    try:
        obj: Any = orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return event
    if not isinstance(obj, dict) or "usage" not in obj:
        return event
    if not obj.get("choices") and obj["usage"] is not None:
        return None
    del obj["usage"]
    kept = [ln for ln in lines if not ln.startswith(b"data:")]
    return eol.join([*kept, b"data: " + orjson.dumps(obj)])
