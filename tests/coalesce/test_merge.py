"""Merging and splitting as pure functions: shares always add up to the upstream's total."""

from __future__ import annotations

import pytest

from proxy.coalesce.merge import (
    SplitError,
    apportion,
    exact_shares,
    parse_items,
    split_completions,
    split_embeddings,
)


@pytest.mark.parametrize(
    ("total", "weights"),
    [(10, [1, 1, 1]), (7, [5, 0, 2]), (0, [1, 2]), (3, [0, 0]), (1001, [3, 7, 11, 13])],
)
def test_apportion_sums_to_the_total(total: int, weights: list[int]) -> None:
    shares = apportion(total, weights)
    assert sum(shares) == total and len(shares) == len(weights) and min(shares) >= 0


def test_parse_items_forms() -> None:
    assert parse_items("a").items == ["a"]  # type: ignore[union-attr]
    assert parse_items([1, 2]).kind == "tokens"  # type: ignore[union-attr]
    assert parse_items([[1], [2, 3]]).items == [[1], [2, 3]]  # type: ignore[union-attr]
    assert parse_items(["a", [1]]) is None  # mixed lists are not merged
    assert parse_items([]) is None and parse_items(None) is None and parse_items([True]) is None


def test_split_embeddings_rejects_a_short_answer() -> None:
    members = [parse_items("a"), parse_items(["b", "c"])]
    answer = {"data": [{"index": 0}, {"index": 1}], "usage": {"prompt_tokens": 3}}
    with pytest.raises(SplitError):
        split_embeddings(answer, members)  # type: ignore[arg-type]


def test_split_completions_orders_by_index() -> None:
    members = [parse_items("a"), parse_items(["b", "c"])]
    choices = [{"index": k, "text": f"t{k}"} for k in reversed(range(6))]
    usage = {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    first, second = split_completions({"choices": choices, "usage": usage}, members, 2)  # type: ignore[arg-type]
    assert [c["text"] for c in first["choices"]] == ["t0", "t1"]
    assert [c["index"] for c in second["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in second["choices"]] == ["t2", "t3", "t4", "t5"]
    assert first["usage"]["total_tokens"] + second["usage"]["total_tokens"] == 9


def test_known_counts_are_exact_and_a_lone_unknown_gets_the_rest() -> None:
    assert exact_shares(10, [3, None, 4], [9, 9, 9]) == [3, 3, 4]
    assert exact_shares(10, [3, None, None], [1, 1, 5]) == [3, 1, 6]
    # Known counts that do not fit the total: the upstream counts otherwise, all apportioned.
    assert exact_shares(5, [3, 4], [3, 4]) == apportion(5, [3, 4])
    assert exact_shares(9, [3, 4], [3, 4]) == apportion(9, [3, 4])


def _choice(index: int, text: str, tokens: list[str] | None) -> dict[str, object]:
    logprobs = (
        None if tokens is None else {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens)}
    )
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": "stop"}


def test_completion_tokens_are_counted_from_logprobs() -> None:
    """Issue 13 item 8: the words of a text are not its tokens; ``logprobs.tokens`` are."""
    members = [parse_items("a b"), parse_items("c")]
    choices = [
        _choice(0, "three words here", ["three words", " here"]),
        _choice(1, "x", list("xyz")),
    ]
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    first, second = split_completions({"choices": choices, "usage": usage}, members, 1)  # type: ignore[arg-type]
    assert first["usage"]["completion_tokens"] == 2 and second["usage"]["completion_tokens"] == 3
    # With echo the listed tokens include the prompt's: apportioned instead, still adding up.
    echoed = split_completions({"choices": choices, "usage": usage}, members, 1, echo=True)  # type: ignore[arg-type]
    assert sum(a["usage"]["completion_tokens"] for a in echoed) == 5


def test_token_arrays_are_exact_text_is_apportioned() -> None:
    tokens = [parse_items([1, 2, 3, 4, 5]), parse_items([[6], [7, 8]])]
    data = [{"index": i} for i in range(3)]
    shares = split_embeddings({"data": data, "usage": {"prompt_tokens": 8}}, tokens)  # type: ignore[arg-type]
    assert [s["usage"]["prompt_tokens"] for s in shares] == [5, 3]
    # An upstream that counts token arrays otherwise (say one more per input): apportioned.
    shares = split_embeddings({"data": data, "usage": {"prompt_tokens": 11}}, tokens)  # type: ignore[arg-type]
    assert sum(s["usage"]["prompt_tokens"] for s in shares) == 11
    texts = [parse_items("one two"), parse_items("three")]
    shares = split_embeddings({"data": data[:2], "usage": {"prompt_tokens": 3}}, texts)  # type: ignore[arg-type]
    assert sum(s["usage"]["prompt_tokens"] for s in shares) == 3
