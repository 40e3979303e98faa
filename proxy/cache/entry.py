"""A stored answer: status, the upstream headers worth keeping, and the body as it arrived.

Binary layout (version 1)::

    b"LPC1" | u32 meta length | meta (JSON) | payload

``meta`` holds the status, the store time (Unix seconds, for ``Age`` and ``max-age``), the kept
headers, the form (``json``: one body; ``sse``: the recorded stream, with the length of each
chunk so a replay keeps the original boundaries) and whether the stream carried usage.
Anything that does not decode is treated as absent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import orjson
from multidict import CIMultiDict

__all__ = ["Entry", "keep_headers"]

_MAGIC = b"LPC1"
_HEAD = struct.Struct("<4sI")

#: Upstream reply headers that describe the answer itself (everything else is dropped: rate
#: limits are stale by the time of a hit, cookies and account names are never shared).
_KEEP_EXACT = frozenset({"content-type", "x-request-id", "openai-model", "openai-version"})
_KEEP_PREFIX = ("openai-",)
_NEVER = frozenset({"openai-organization", "openai-project"})


def keep_headers(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The headers of an upstream reply that a cached copy repeats."""
    kept = []
    for name, value in headers.items():
        low = name.lower()
        if low in _NEVER:
            continue
        if low in _KEEP_EXACT or low.startswith(_KEEP_PREFIX):
            kept.append((name, value))
    return kept


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    stored_at: float
    headers: tuple[tuple[str, str], ...]
    form: Literal["json", "sse"]
    #: ``json``: the body; ``sse``: the chunks joined.
    payload: bytes
    #: ``sse`` only: length of every recorded chunk.
    chunk_sizes: tuple[int, ...] = ()
    #: ``sse`` only: the stream ends with a usage chunk (``stream_options.include_usage``).
    has_usage: bool = False

    def chunks(self) -> list[bytes]:
        out, pos, payload = [], 0, self.payload
        for size in self.chunk_sizes:
            out.append(payload[pos : pos + size])
            pos += size
        return out

    def encode(self) -> bytes:
        meta = orjson.dumps(
            {
                "s": self.status,
                "t": self.stored_at,
                "h": self.headers,
                "f": self.form,
                "c": self.chunk_sizes,
                "u": self.has_usage,
            }
        )
        return b"".join((_HEAD.pack(_MAGIC, len(meta)), meta, self.payload))

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """The entry in ``raw``, or ``None`` if it is not one (garbage reads as a miss)."""
        try:
            magic, size = _HEAD.unpack_from(raw)
            if magic != _MAGIC:
                return None
            end = _HEAD.size + size
            meta = orjson.loads(raw[_HEAD.size : end])
            entry = cls(
                status=int(meta["s"]),
                stored_at=float(meta["t"]),
                headers=tuple((str(k), str(v)) for k, v in meta["h"]),
                form="sse" if meta["f"] == "sse" else "json",
                payload=raw[end:],
                chunk_sizes=tuple(int(n) for n in meta["c"]),
                has_usage=bool(meta["u"]),
            )
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if entry.form == "sse" and sum(entry.chunk_sizes) != len(entry.payload):
            return None
        return entry
