"""Reading a stored JSONL file line by line, and checking each line as OpenAI does.

Nothing here holds more than one chunk and one line of a file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from .store import FileStore

__all__ = ["LineError", "Request", "blank", "chunks_of", "parse_request", "read_lines"]


async def chunks_of(files: FileStore, file_id: str) -> AsyncIterator[bytes]:
    """The file's chunks in order, fetched one at a time."""
    index = 0
    while (chunk := await files.chunk(file_id, index)) is not None:
        yield chunk
        index += 1


async def read_lines(
    chunks: AsyncIterator[bytes], *, max_line_bytes: int
) -> AsyncIterator[tuple[int, bytes | None]]:
    """``(line number from 1, line)`` for every line; ``None`` for a line over
    ``max_line_bytes`` (its bytes are skipped, not kept). A last line without a newline counts;
    a final newline does not start another line."""
    number = 0
    pending: list[bytes] = []
    size = 0
    too_long = False
    async for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not too_long:
                size += len(piece)
                if size > max_line_bytes:
                    too_long, pending = True, []
                elif piece:
                    pending.append(piece)
            if end < 0:
                break
            number += 1
            yield number, None if too_long else b"".join(pending)
            pending, size, too_long = [], 0, False
            start = end + 1
    if pending or too_long:
        yield number + 1, None if too_long else b"".join(pending)


@dataclass(frozen=True, slots=True)
class Request:
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LineError(Exception):
    """One line's problem, as an entry of the batch's ``errors.data``."""

    code: str
    message: str
    param: str | None = None

    def entry(self, line: int) -> dict[str, Any]:
        return {"code": self.code, "line": line, "message": self.message, "param": self.param}


def parse_request(raw: bytes | None, *, endpoint: str) -> Request:
    """A line as a request of a batch for ``endpoint``, or :class:`LineError`."""
    if raw is None:
        raise LineError("line_too_long", "This line is longer than the proxy accepts.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LineError("invalid_json_line", "This line is not parseable as valid JSON.") from None
    if not isinstance(data, dict):
        raise LineError("invalid_json_line", "This line is not a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError(
            "missing_required_parameter",
            "Each request needs a 'custom_id' string.",
            "custom_id",
        )
    if data.get("method") != "POST":
        raise LineError("invalid_method", "The method of each request must be 'POST'.", "method")
    if data.get("url") != endpoint:
        raise LineError(
            "mismatched_endpoint",
            f"The url of each request must be the batch's endpoint, '{endpoint}'.",
            "url",
        )
    body = data.get("body")
    if not isinstance(body, dict):
        raise LineError("invalid_body", "The body of each request must be a JSON object.", "body")
    if body.get("stream") is True:
        raise LineError(
            "invalid_body",
            "Requests in a batch are not streamed: leave out 'stream'.",
            "body.stream",
        )
    return Request(custom_id, body)


def blank(raw: bytes | None) -> bool:
    """A line of whitespace only: not a request, skipped (an extra newline at the end is common)."""
    return raw is not None and not raw.strip()
