"""Merging and splitting as pure functions: shares always add up to the upstream's total."""

from __future__ import annotations

import pytest

from proxy.coalesce.merge import (
    SplitError,
    apportion,
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
