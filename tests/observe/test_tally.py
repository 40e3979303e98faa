"""Folded observations give the same histogram as observing one by one."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram

from proxy.observe.tally import Tally, observe_all

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_folded_histogram_equals_one_observed_value_by_value() -> None:
    rng = random.Random(7)
    # Values on the bounds themselves, between them, below the first and above the last.
    values = [*BOUNDS, 0.0, 0.0009, 99.0, *(rng.uniform(0, 12) ** 3 / 100 for _ in range(500))]
    one, folded = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", ["route"], buckets=BOUNDS, registry=one).labels("r")
    by_fold = Histogram("h", "h", ["route"], buckets=BOUNDS, registry=folded).labels("r")
    for value in values:
        by_one.observe(value)
    observe_all(by_fold, values[:100])
    observe_all(by_fold, values[100:])
    got, want = _samples(folded), _samples(one)
    key = ("h_sum", (("route", "r"),))
    assert abs(got.pop(key) - want.pop(key)) < 1e-9  # one sum of many vs many additions
    assert got == want


def test_a_tally_adds_nothing_until_folded_then_everything_once() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry)
    histogram = Histogram("h", "h", buckets=BOUNDS, registry=registry)
    tally = Tally()
    for _ in range(3):
        tally.inc(counter.labels("a"))
        tally.observe(histogram, 0.004)
    tally.inc(counter.labels("b"))
    assert registry.get_sample_value("c_total", {"k": "a"}) == 0.0
    tally.fold()
    tally.fold()  # nothing left to add
    assert registry.get_sample_value("c_total", {"k": "a"}) == 3.0
    assert registry.get_sample_value("c_total", {"k": "b"}) == 1.0
    assert registry.get_sample_value("h_count") == 3.0
    assert registry.get_sample_value("h_bucket", {"le": "0.005"}) == 3.0
    assert registry.get_sample_value("h_bucket", {"le": "0.0025"}) == 0.0
    assert abs(registry.get_sample_value("h_sum") - 0.012) < 1e-12  # type: ignore[operator]
