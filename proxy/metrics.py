"""Counters and histograms, on a registry of the app's own (no process globals).

Label values are route paths, upstream names and outcomes: never a tenant, key or prompt.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics"]


class Metrics:
    """The app's metrics. ``multiprocess_dir``: this process is one of several workers (the
    supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before they start, so prometheus-client keeps
    every value in a file there) and ``/metrics`` reports the sum over all of them.

    Every Gauge needs a ``multiprocess_mode`` saying how the workers' values combine:
    ``livesum`` for amounts (bytes, entries, requests in flight), ``livemax`` for ratios.
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.upstream_errors = Counter(
            "llm_proxy_upstream_errors",
            "Upstream calls that failed",
            ["upstream", "kind"],
            registry=r,
        )
        # Cache (issue: response cache).
        self.cache_hits = Counter("llm_proxy_cache_hits", "Cache hits", ["route"], registry=r)
        self.cache_misses = Counter("llm_proxy_cache_misses", "Cache misses", ["route"], registry=r)
        self.cache_bypasses = Counter(
            "llm_proxy_cache_bypasses", "Requests that skipped the cache", ["route"], registry=r
        )
        self.cache_stores = Counter("llm_proxy_cache_stores", "Entries stored", registry=r)
        self.cache_evictions = Counter("llm_proxy_cache_evictions", "Entries evicted", registry=r)
        self.cache_bytes = Gauge(
            "llm_proxy_cache_bytes",
            "Bytes held by the memory cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "llm_proxy_cache_entries",
            "Entries in the memory cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.redis_errors = Counter(
            "llm_proxy_redis_errors", "Redis operations that failed", ["op"], registry=r
        )
        # Coalescing.
        self.deduplicated = Counter(
            "llm_proxy_deduplicated", "Requests answered by another's upstream call", registry=r
        )
        self.batches = Counter("llm_proxy_batches", "Merged upstream calls", ["route"], registry=r)
        self.batch_size = Histogram(
            "llm_proxy_batch_size",
            "Inputs per merged call",
            ["route"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_efficiency = Gauge(
            "llm_proxy_batch_efficiency",
            "Estimated time of the batch's requests sent alone / time of the batch",
            ["route"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cache_input_hits = Counter(
            "llm_proxy_cache_input_hits",
            "Embedding inputs answered from the cache",
            ["route"],
            registry=r,
        )
        self.cache_input_misses = Counter(
            "llm_proxy_cache_input_misses", "Embedding inputs sent upstream", ["route"], registry=r
        )
        # Jobs.
        self.jobs = Counter("llm_proxy_jobs", "Job state changes", ["status"], registry=r)
        # Processes: with workers, one sample per live worker (labelled by pid).
        self.process_up = Gauge(
            "llm_proxy_process_up", "1 per serving process", registry=r, multiprocess_mode="liveall"
        )
        self.process_up.set(1)

    def hit_rate(self) -> float:
        """Hits / all cacheable requests (the design notes' 缓存命中率)."""
        hits = _total(self.cache_hits)
        total = hits + _total(self.cache_misses) + _total(self.cache_bypasses)
        return hits / total if total else 0.0

    def export(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # Every worker's values, read from their files at each scrape.
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def _total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
