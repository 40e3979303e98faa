"""``GET /stats``: the numbers an operator looks at first, read from the metrics registry.

Everything but the recent errors comes from the Prometheus families, so ``/stats`` and
``/metrics`` never disagree (with workers, both read every worker's values: ``Metrics.view``).
Rates are the change since an earlier ``/stats`` call at least :data:`RATE_WINDOW_S` ago.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..errors import StoreUnavailable
from ..keys import CACHE, JOBS, METRICS, OBSERVER, SINGLEFLIGHT

__all__ = ["Stats", "quantile", "refresh_gauges"]

#: Rates are measured over at least this many seconds (the dashboard asks every 2 s).
RATE_WINDOW_S = 10.0

Samples = dict[str, list[tuple[dict[str, str], float]]]
#: A histogram bucket: (upper bound, cumulative count).
Bucket = tuple[float, float]


class _Sample(NamedTuple):
    time: float
    requests: float
    errors: float
    buckets: list[Bucket]


def samples(registry: CollectorRegistry) -> Samples:
    """Every sample, by sample name (``llm_proxy_requests_total``), with its labels."""
    out: Samples = collections.defaultdict(list)
    for family in registry.collect():
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(data: Samples, name: str, **match: str) -> float:
    return sum(
        v for labels, v in data.get(name, ()) if all(labels.get(k) == m for k, m in match.items())
    )


def buckets(data: Samples, name: str) -> list[Bucket]:
    """A histogram's cumulative ``(upper bound, count)`` pairs, summed over its labels."""
    sums: dict[float, float] = collections.defaultdict(float)
    for labels, v in data.get(f"{name}_bucket", ()):
        sums[float(labels["le"])] += v
    return sorted(sums.items())


def quantile(q: float, cumulative: Iterable[Bucket]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket; ``None`` when empty."""
    pairs = list(cumulative)
    if not pairs or pairs[-1][1] == 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def refresh_gauges(app: web.Application) -> None:
    """Gauges that are read, not pushed: hit ratio, breakers, job queue depth."""
    metrics = app[METRICS]
    metrics.cache_hit_ratio.set(metrics.hit_rate())
    for name, breaker in _breakers(app):
        metrics.breaker_open.labels(path=name).set(1 if breaker.is_open else 0)
    jobs = app.get(JOBS)
    if jobs is not None:
        try:
            metrics.jobs_queued.set(await jobs.store.queued())
        except StoreUnavailable:  # the last value stays; the store's own log line says why
            pass


def _breakers(app: web.Application) -> list[tuple[str, Any]]:
    found = []
    cache = app.get(CACHE)
    breaker = getattr(getattr(cache, "backend", None), "breaker", None)
    if breaker is not None:
        found.append(("cache", breaker))
    flight = app.get(SINGLEFLIGHT)
    breaker = getattr(getattr(flight, "remote", None), "breaker", None)
    if breaker is not None:
        found.append(("coalescing", breaker))
    return found


class Stats:
    """Builds the ``/stats`` document; keeps a few earlier totals to compute rates."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self.clock = clock
        #: (time, requests, 5xx answers, request duration buckets) at earlier calls
        self._history: collections.deque[_Sample] = collections.deque(maxlen=64)

    async def document(self, app: web.Application) -> dict[str, Any]:
        await refresh_gauges(app)
        metrics = app[METRICS]
        view = metrics.view()
        data = samples(view)
        requests = total(data, "llm_proxy_requests_total")
        answers = data.get("llm_proxy_requests_total", ())
        errors = sum(v for labels, v in answers if labels["status"].startswith("5"))
        whole = buckets(data, "llm_proxy_request_duration_seconds")
        rps, eps, recent = self._recent(_Sample(self.clock(), requests, errors, whole))
        cacheable = sum(
            total(data, f"llm_proxy_cache_{k}_total") for k in ("hits", "misses", "bypasses")
        )
        batches = total(data, "llm_proxy_batch_size_count")
        batch_inputs = total(data, "llm_proxy_batch_size_sum")
        return {
            "time": time.time(),
            "requests": {
                "total": int(requests),
                "per_second": rps,
                "errors_5xx": int(errors),
                "errors_per_second": eps,
                "in_flight": int(total(data, "llm_proxy_requests_in_flight")),
                "by_status": _by(data, "llm_proxy_requests_total", "status"),
                "by_route": _by(data, "llm_proxy_requests_total", "route"),
            },
            "cache": {
                "hit_ratio": metrics.hit_rate(view),
                "hits": int(total(data, "llm_proxy_cache_hits_total")),
                "cacheable": int(cacheable),
                "bytes": int(total(data, "llm_proxy_cache_bytes")),
                "entries": int(total(data, "llm_proxy_cache_entries")),
            },
            "saved": {
                cause: int(total(data, "llm_proxy_upstream_calls_saved_total", cause=cause))
                for cause in ("cache", "dedup", "batching")
            },
            "latency_ms": _latencies(data),
            # over the same window as the rates (the dashboard's chart)
            "recent_latency_ms": {
                "p50": _ms(quantile(0.5, recent)),
                "p99": _ms(quantile(0.99, recent)),
            },
            "batches": {
                "count": int(batches),
                "mean_size": round(batch_inputs / batches, 2) if batches else None,
                "sizes": _histogram(data, "llm_proxy_batch_size"),
                "efficiency": {
                    labels["route"]: round(v, 3)
                    for labels, v in data.get("llm_proxy_batch_efficiency", ())
                },
            },
            "jobs": {
                "queued": int(total(data, "llm_proxy_jobs_queued")),
                "by_status": _by(data, "llm_proxy_jobs_total", "status"),
                "wait_p50_ms": _ms(quantile(0.5, buckets(data, "llm_proxy_job_wait_seconds"))),
            },
            "upstream_errors": _by(data, "llm_proxy_upstream_errors_total", "kind"),
            "breakers_open": [
                labels["path"] for labels, v in data.get("llm_proxy_breaker_open", ()) if v
            ],
            "recent_errors": list(reversed(app[OBSERVER].recent_errors)),
        }

    def _recent(self, now: _Sample) -> tuple[float | None, float | None, list[Bucket]]:
        """Requests and 5xx per second, and the duration buckets, since a sample at least
        :data:`RATE_WINDOW_S` old (or the oldest one); nothing until a second has passed."""
        history = self._history
        if not history or now.time - history[-1].time >= 1.0:
            history.append(now)
        base = history[0]
        for sample in history:
            if now.time - sample.time < RATE_WINDOW_S:
                break
            base = sample
        elapsed = now.time - base.time
        if elapsed < 1.0:
            return None, None, []
        before = dict(base.buckets)
        recent = [(bound, count - before.get(bound, 0.0)) for bound, count in now.buckets]
        return (
            round((now.requests - base.requests) / elapsed, 2),
            round((now.errors - base.errors) / elapsed, 2),
            recent,
        )


def _by(data: Samples, name: str, label: str) -> dict[str, int]:
    out: dict[str, int] = collections.defaultdict(int)
    for labels, v in data.get(name, ()):
        out[labels[label]] += int(v)
    return dict(sorted(out.items()))


def _latencies(data: Samples) -> dict[str, float | None]:
    whole = buckets(data, "llm_proxy_request_duration_seconds")
    upstream = buckets(data, "llm_proxy_upstream_duration_seconds")
    ttfb = buckets(data, "llm_proxy_time_to_first_byte_seconds")
    return {
        "p50": _ms(quantile(0.5, whole)),
        "p99": _ms(quantile(0.99, whole)),
        "upstream_p50": _ms(quantile(0.5, upstream)),
        "upstream_p99": _ms(quantile(0.99, upstream)),
        "ttfb_p50": _ms(quantile(0.5, ttfb)),
    }


def _histogram(data: Samples, name: str) -> list[dict[str, float]]:
    """Per-bucket (not cumulative) counts: ``[{"le": 1, "count": 3}, ...]``."""
    out, below = [], 0.0
    for bound, count in buckets(data, name):
        out.append({"le": bound if not math.isinf(bound) else -1, "count": int(count - below)})
        below = count
    return out
