"""Merging list inputs into one request and splitting the answer back, as pure functions.

``input`` (embeddings) and ``prompt`` (completions) may be a string, a list of strings, a token
array or a list of token arrays. Members of one batch are merged into a list of strings or a list
of token arrays, never both. The answer is split back so that each caller sees indices from 0,
its own items only, and a share of ``usage``; the shares add up to the upstream's total.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "Item",
    "Parsed",
    "SplitError",
    "apportion",
    "estimate_tokens",
    "parse_items",
    "split_completions",
    "split_embeddings",
    "split_usage",
]

Item = str | list[int]
Kind = Literal["text", "tokens"]


class SplitError(ValueError):
    """The upstream's answer does not have the shape the merged request asked for."""


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


class Parsed:
    """One caller's inputs: the items, whether they were one bare item, and their kind."""

    __slots__ = ("items", "kind", "tokens")

    def __init__(self, items: list[Item], kind: Kind) -> None:
        self.items = items
        self.kind = kind
        self.tokens = [estimate_tokens(item) for item in items]


def parse_items(value: Any) -> Parsed | None:
    """The items of an ``input``/``prompt`` value; ``None`` when it is not one we can merge."""
    if isinstance(value, str):
        return Parsed([value], "text")
    if _is_tokens(value):
        return Parsed([value], "tokens")
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return Parsed(list(value), "text")
        if all(_is_tokens(v) for v in value):
            return Parsed(list(value), "tokens")
    return None


def estimate_tokens(item: Item) -> int:
    """Tokens of one input: exact for token arrays, about four characters each for text."""
    if isinstance(item, str):
        return max(1, (len(item) + 3) // 4)
    return len(item)


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder): shares sum to ``total``."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _count(usage: dict[str, Any], name: str) -> int | None:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def split_usage(
    usage: Any, prompt_weights: list[int], completion_weights: list[int] | None = None
) -> list[Any]:
    """Each member's share of ``usage``; prompt and completion tokens split by their weights."""
    members = len(prompt_weights)
    if not isinstance(usage, dict):
        return [usage] * members
    prompt = _count(usage, "prompt_tokens") or 0
    prompts = apportion(prompt, prompt_weights)
    completion = _count(usage, "completion_tokens")
    completions = [0] * members
    if completion is not None:
        completions = apportion(completion, completion_weights or prompt_weights)
    total = _count(usage, "total_tokens")
    if total is None or total == prompt + (completion or 0):
        totals = [p + c for p, c in zip(prompts, completions, strict=True)]
    else:
        totals = apportion(total, [p + c for p, c in zip(prompts, completions, strict=True)])
    shares = []
    for i in range(members):
        share = {"prompt_tokens": prompts[i]}
        if completion is not None:
            share["completion_tokens"] = completions[i]
        share["total_tokens"] = totals[i]
        shares.append(share)
    return shares


def _indexed(entries: Any, expected: int) -> list[dict[str, Any]]:
    """Entries ordered by ``index``, which must be exactly 0 .. expected - 1."""
    if not isinstance(entries, list) or len(entries) != expected:
        raise SplitError(f"expected {expected} entries, got {_length(entries)}")
    if not all(isinstance(e, dict) and isinstance(e.get("index"), int) for e in entries):
        raise SplitError("an entry has no integer index")
    ordered = sorted(entries, key=lambda e: int(e["index"]))
    if [e["index"] for e in ordered] != list(range(expected)):
        raise SplitError("indices are not 0 .. n - 1")
    return ordered


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else type(value).__name__


def split_embeddings(answer: Any, members: list[Parsed]) -> list[dict[str, Any]]:
    """One embeddings answer per member, from the answer to their merged request."""
    if not isinstance(answer, dict):
        raise SplitError("the answer is not a JSON object")
    data = _indexed(answer.get("data"), sum(len(m.items) for m in members))
    usages = split_usage(answer.get("usage"), [sum(m.tokens) for m in members])
    out, pos = [], 0
    for member, usage in zip(members, usages, strict=True):
        size = len(member.items)
        part = [{**d, "index": j} for j, d in enumerate(data[pos : pos + size])]
        pos += size
        out.append({**answer, "data": part, "usage": usage})
    return out


def _words(choice: dict[str, Any]) -> int:
    text = choice.get("text")
    return len(text.split()) if isinstance(text, str) else 0


def split_completions(answer: Any, members: list[Parsed], n: int) -> list[dict[str, Any]]:
    """One completions answer per member; choice ``prompt_i * n + j`` goes to prompt_i's caller."""
    if not isinstance(answer, dict):
        raise SplitError("the answer is not a JSON object")
    choices = _indexed(answer.get("choices"), sum(len(m.items) for m in members) * n)
    parts, pos = [], 0
    for member in members:
        size = len(member.items) * n
        parts.append([{**c, "index": j} for j, c in enumerate(choices[pos : pos + size])])
        pos += size
    usages = split_usage(
        answer.get("usage"),
        [sum(m.tokens) for m in members],
        [sum(_words(c) for c in part) for part in parts],
    )
    return [
        {**answer, "choices": part, "usage": usage}
        for part, usage in zip(parts, usages, strict=True)
    ]
