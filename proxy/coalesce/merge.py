"""Merging list inputs into one request and splitting the answer back, as pure functions.

``input`` (embeddings) and ``prompt`` (completions) may be a string, a list of strings, a token
array or a list of token arrays. Members of one batch are merged into a list of strings or a list
of token arrays, never both. The answer is split back so that each caller sees indices from 0,
its own items only, and a share of ``usage``; the shares add up to the upstream's total.

Upstreams (OpenAI, vLLM) report ``usage`` only for the whole call, so a member's count is exact
only where the answer or the request determines it: prompt tokens of token arrays (their
length), completion tokens of choices that carry ``logprobs.tokens`` (one entry per token, unless
``echo`` mixes the prompt in), and a lone member whose count is the total less everyone else's
exact counts. The rest is apportioned by estimates.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "Item",
    "Parsed",
    "SplitError",
    "apportion",
    "estimate_tokens",
    "exact_shares",
    "parse_items",
    "split_completions",
    "split_embeddings",
    "split_usage",
]

Item = str | list[int]
Kind = Literal["text", "tokens"]
#: A member's token count: exactly known (or ``None``), and its estimate, the weight of its share.
Count = tuple[int | None, int]


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

    @property
    def prompt(self) -> Count:
        """Its prompt tokens: exact for token arrays, estimated for text."""
        return (sum(self.tokens) if self.kind == "tokens" else None), sum(self.tokens)


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


def exact_shares(total: int, known: list[int | None], weights: list[int]) -> list[int]:
    """Split ``total``: a member with a ``known`` count gets exactly that, the others share the
    rest by ``weights``. When the known counts do not fit the total (the upstream counts in a
    way we did not assume), everyone's share is apportioned by ``weights``."""
    exact = sum(k for k in known if k is not None)
    unknown = [i for i, k in enumerate(known) if k is None]
    if exact > total or (not unknown and exact != total):
        return apportion(total, weights)
    shares = [k or 0 for k in known]
    for i, share in zip(
        unknown, apportion(total - exact, [weights[i] for i in unknown]), strict=True
    ):
        shares[i] = share
    return shares


def _shares(total: int, counts: list[Count]) -> list[int]:
    return exact_shares(total, [known for known, _ in counts], [weight for _, weight in counts])


def _count(usage: dict[str, Any], name: str) -> int | None:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def split_usage(
    usage: Any,
    prompt: list[Count],
    completion: list[Count] | None = None,
) -> list[Any]:
    """Each member's share of ``usage``: exact where its count is known, else by its weight."""
    members = len(prompt)
    if not isinstance(usage, dict):
        return [usage] * members
    prompt_total = _count(usage, "prompt_tokens") or 0
    prompts = _shares(prompt_total, prompt)
    completion_total = _count(usage, "completion_tokens")
    completions = [0] * members
    if completion_total is not None:
        completions = _shares(completion_total, completion or prompt)
    total = _count(usage, "total_tokens")
    if total is None or total == prompt_total + (completion_total or 0):
        totals = [p + c for p, c in zip(prompts, completions, strict=True)]
    else:
        totals = apportion(total, [p + c for p, c in zip(prompts, completions, strict=True)])
    shares = []
    for i in range(members):
        share = {"prompt_tokens": prompts[i]}
        if completion_total is not None:
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
    usages = split_usage(answer.get("usage"), [m.prompt for m in members])
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


def _logprob_tokens(choice: dict[str, Any]) -> int | None:
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    return len(tokens) if isinstance(tokens, list) else None


def _completion(choices: list[dict[str, Any]], echo: bool) -> Count:
    """Completion tokens of a member's choices: exact when each lists its tokens."""
    weight = sum(_words(c) for c in choices)
    counts = [_logprob_tokens(c) for c in choices]
    if echo or any(count is None for count in counts):
        return None, weight
    return sum(count or 0 for count in counts), weight


def split_completions(
    answer: Any, members: list[Parsed], n: int, *, echo: bool = False
) -> list[dict[str, Any]]:
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
        [m.prompt for m in members],
        [_completion(part, echo) for part in parts],
    )
    return [
        {**answer, "choices": part, "usage": usage}
        for part, usage in zip(parts, usages, strict=True)
    ]
