"""The cache key: SHA-256 over tenant, upstream, path, query, the headers that select an account,
and the canonical request body.

Two requests that mean the same thing get the same key (key order, whitespace and number
spelling do not matter; ``stream``, ``stream_options`` and ``cache.ignore_fields`` are dropped).
Anything that can change the answer (model after aliasing, messages, tools, temperature, n, the
query such as Azure's ``api-version``, ``OpenAI-Organization``/``OpenAI-Project``, ...) changes
the key. The order of a JSON Schema's ``properties`` is kept: structured outputs follow it.

A key reads ``<scope>:<sha256 hex>``: the scope is the tenant id (itself a hash of the
credential) or ``shared``, so one tenant's part of the cache can be found and emptied; the rest is
a hash. No prompt text and no credential ever appears in a key.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..call import VARY_HEADERS, Call
from ..config import CacheSettings

__all__ = [
    "NEVER_IN_KEY",
    "SHARED_SCOPE",
    "VARY_HEADERS",
    "canonical_body",
    "digest_of",
    "drop_fields",
    "is_deterministic",
    "request_key",
    "variant",
]

#: Fields that change the transport, not the answer.
NEVER_IN_KEY = frozenset({"stream", "stream_options"})
#: The scope of every key when ``cache.shared`` is on.
SHARED_SCOPE = "shared"
#: The bulk of a request, taken as it is (its keys are still sorted when dumped): walking it to
#: normalise numbers cost most of the key's time, and no number or schema lives there.
_VERBATIM = frozenset({"messages", "input", "prompt"})
#: JSON Schema keys whose members' order is meaningful (structured outputs and tool arguments
#: are generated in the order of ``properties``).
_ORDERED = "properties"


def _normalise(value: Any) -> Any:
    if isinstance(value, str):  # most values: settle them first
        return value
    if isinstance(value, float):
        # 1, 1.0 and 1e0 mean the same temperature.
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {
            k: _in_order(v) if k == _ORDERED and isinstance(v, dict) else _normalise(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _in_order(members: dict[str, Any]) -> list[Any]:
    """A mapping whose order matters, as pairs (sorting the keys would merge two schemas)."""
    return [[k, _normalise(v)] for k, v in members.items()]


def variant(call: Call) -> bytes:
    """What besides the body selects the answer: the query and the account headers."""
    return call.vary


def canonical_body(data: dict[str, Any], drop: frozenset[str]) -> bytes:
    """The request as sorted, compact JSON, without the fields in ``drop``."""
    body = {k: v if k in _VERBATIM else _normalise(v) for k, v in data.items() if k not in drop}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def is_deterministic(data: dict[str, Any]) -> bool:
    """``temperature: 0`` or a ``seed``: the answer is meant to repeat."""
    return data.get("temperature") == 0 or data.get("seed") is not None


def request_key(
    call: Call, *, settings: CacheSettings, drop: frozenset[str], extra: bytes = b""
) -> str:
    """``<scope>:<hex SHA-256>`` naming ``call``'s answer; ``extra`` narrows it (e.g. one
    embedding input)."""
    assert call.json is not None
    h = hashlib.sha256()
    scope = SHARED_SCOPE if settings.shared else call.tenant
    h.update(
        f"v{settings.key_version}\x00{scope}\x00{call.upstream.name}\x00{call.path}\x00".encode()
    )
    h.update(variant(call))  # a JSON array, never confused with the body (an object)
    h.update(canonical_body(call.json, drop))
    if extra:
        h.update(b"\x00")
        h.update(extra)
    return f"{scope}:{h.hexdigest()}"


def digest_of(key: str) -> str:
    """The hash part of a key (what ``X-Cache-Key`` shows)."""
    return key.rpartition(":")[2]


def drop_fields(settings: CacheSettings) -> frozenset[str]:
    return NEVER_IN_KEY | frozenset(settings.ignore_fields)
