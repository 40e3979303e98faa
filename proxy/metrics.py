"""Counters and histograms, on a registry of the app's own (no process globals).

Label values are route paths, upstream names and outcomes: never a tenant, key or prompt. Every
Gauge names its ``multiprocess_mode`` (how worker processes' values combine); the per-request
families are plain counters and histograms, which multiprocess mode sums. See docs/operations.md.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["LATENCY_BUCKETS_S", "Metrics"]

#: Seconds: from a cache hit (well under a millisecond) to a long generation.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


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
        # Readiness (proxy.readiness): 1 while a part is degraded, as of the last check.
        self.degraded = Gauge(
            "llm_proxy_degraded",
            "1 while a part is degraded (cache off, job store unavailable), by part",
            ["part"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Processes: with workers, one sample per live worker (labelled by pid).
        self.process_up = Gauge(
            "llm_proxy_process_up", "1 per serving process", registry=r, multiprocess_mode="liveall"
        )
        self.process_up.set(1)
        self._add_observability(r)
        ProcessCollector(registry=r)

    def _add_observability(self, r: CollectorRegistry) -> None:
        """The per-request families (filled by :mod:`proxy.observe`) and the state gauges."""
        self.requests = Counter(
            "llm_proxy_requests",
            "Requests answered, by route, upstream, model, status and cache result",
            ["route", "upstream", "model", "status", "cache"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "llm_proxy_request_duration_seconds",
            "Whole request, as the proxy saw it",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "llm_proxy_upstream_duration_seconds",
            "Upstream call, until its answer started",
            ["upstream"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttfb_seconds = Histogram(
            "llm_proxy_time_to_first_byte_seconds",
            "Streamed answers: until the first byte went to the client",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "llm_proxy_requests_in_flight",
            "Requests being handled",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls_saved = Counter(
            "llm_proxy_upstream_calls_saved",
            "Upstream calls not made, by cause (cache, dedup, batching)",
            ["cause"],
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "llm_proxy_cache_hit_ratio",
            "Cache hits / cacheable requests since start (the design notes' formula)",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.jobs_queued = Gauge(
            "llm_proxy_jobs_queued",
            "Jobs waiting in the queue (the store's count: shared by replicas on Redis)",
            registry=r,
            multiprocess_mode="max",
        )
        self.job_wait_seconds = Histogram(
            "llm_proxy_job_wait_seconds",
            "From a job's submission to its first attempt",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.breaker_open = Gauge(
            "llm_proxy_breaker_open",
            "1 while a Redis path's circuit breaker is open (the path is skipped)",
            ["path"],
            registry=r,
            multiprocess_mode="max",
        )

    def hit_rate(self, view: CollectorRegistry | None = None) -> float:
        """Hits / all cacheable requests (the design notes' 缓存命中率), over every worker."""
        counts = dict.fromkeys(_CACHEABLE, 0.0)
        sources: tuple[Counter | CollectorRegistry, ...] = (view or self.view(),)
        if view is None and self.multiprocess_dir is None:  # one process: just the counters
            sources = (self.cache_hits, self.cache_misses, self.cache_bypasses)
        for family in (f for source in sources for f in source.collect()):
            for s in family.samples:
                if s.name in counts:
                    counts[s.name] += s.value
        total = sum(counts.values())
        return counts[_CACHEABLE[0]] / total if total else 0.0

    def view(self) -> CollectorRegistry:
        """What ``/metrics`` and ``/stats`` report: this process's registry, or with workers
        every worker's values, read from their files at each call (a worker's own registry
        holds only its own)."""
        if self.multiprocess_dir is None:
            return self.registry
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return merged

    def export(self) -> bytes:
        return generate_latest(self.view())


#: Hits first: the cacheable requests are these three.
_CACHEABLE = (
    "llm_proxy_cache_hits_total",
    "llm_proxy_cache_misses_total",
    "llm_proxy_cache_bypasses_total",
)
