"""/metrics after real traffic: every family the issue lists, with bounded labels (issue 9)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.fake_upstream import Scripted
from proxy.config import parse_settings
from proxy.observe.labels import ModelLabels
from tests.conftest import Fake, ProxyFactory
from tests.jobs.conftest import http as job_http
from tests.jobs.conftest import wait_for
from tests.support import http
from tests.support.live import BackgroundLoop

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = http.get(f"{url}/metrics").body.decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(data: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(
        v for lab, v in data.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def traffic(base: str, fake: Fake) -> None:
    """Misses, hits, a stream, duplicates in flight, a batch, refusals, an unreachable upstream,
    a job."""
    chat_url = f"{base}/chat/completions"
    for _ in range(2):
        assert http.post(chat_url, CHAT).status == 200  # miss, then hit
    assert http.post(chat_url, {**CHAT, "stream": True}).status == 200  # a stream (a hit too)
    fake.state.latency_ms = 300.0
    same = {**CHAT, "messages": [{"role": "user", "content": "in flight together"}]}
    embeddings = [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(4)]
    with ThreadPoolExecutor(8) as pool:
        dup = [pool.submit(http.post, chat_url, same) for _ in range(3)]
        emb = [pool.submit(http.post, f"{base}/embeddings", body) for body in embeddings]
        assert [f.result().status for f in dup + emb] == [200] * 7
    fake.state.latency_ms = 0.0
    assert http.post(chat_url, {**CHAT, "model": "no-such-model"}).status == 404  # upstream 4xx
    fake.state.script.append(Scripted(500, {"error": {"message": "boom", "code": "boom"}}))
    five = {**CHAT, "messages": [{"role": "user", "content": "fail please"}]}
    assert http.post(chat_url, five).status == 500  # upstream 5xx
    assert http.post(chat_url, {**CHAT, "model": "dead-1"}).status == 502  # unreachable
    job = job_http("POST", f"{base}/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    job_id = job.json()["id"]
    wait_for(
        lambda: job_http("GET", f"{base}/jobs/{job_id}").json()["status"] == "completed",
        what="the job",
    )


def test_every_metric_family_after_real_traffic(
    make_proxy: ProxyFactory, fake: Fake, redis_url: str
) -> None:
    proxy = make_proxy(
        {
            "redis": {"url": redis_url},
            "cache": {"backend": "redis"},
            "jobs": {"store": "memory"},
            "batching": {"embeddings": {"max_wait_ms": 250, "max_batch_size": 4}},
            "upstreams": [
                {"name": "gone", "base_url": "http://127.0.0.1:9/v1", "models": ["dead-*"]},
                {"name": "fake", "base_url": fake.url, "models": ["gpt-4o-mini", "*"]},
            ],
            "routing": {"default_upstream": "fake"},
        }
    )
    traffic(proxy.base_url, fake)
    m = scrape(proxy.url)

    chat = "/v1/chat/completions"
    hits = value(m, "llm_proxy_requests_total", route=chat, cache="HIT", status="200")
    assert hits >= 2
    assert value(m, "llm_proxy_requests_total", route=chat, upstream="fake", model="gpt-4o-mini")
    assert value(m, "llm_proxy_requests_total", route="/v1/embeddings", status="200") == 4
    assert value(m, "llm_proxy_requests_total", route=chat, upstream="gone", status="502") == 1
    assert value(m, "llm_proxy_request_duration_seconds_count", route=chat) == 9
    assert value(m, "llm_proxy_upstream_duration_seconds_count", upstream="fake") >= 3
    assert value(m, "llm_proxy_time_to_first_byte_seconds_count", route=chat) == 1
    assert "llm_proxy_requests_in_flight" in m
    for cause in ("cache", "dedup", "batching"):
        assert value(m, "llm_proxy_upstream_calls_saved_total", cause=cause) >= 1, cause
    assert 0 < value(m, "llm_proxy_cache_hit_ratio") < 1
    assert value(m, "llm_proxy_cache_hits_total") >= 2
    assert value(m, "llm_proxy_batch_size_count") >= 1
    assert "llm_proxy_jobs_queued" in m and value(m, "llm_proxy_jobs_total", status="completed")
    assert value(m, "llm_proxy_job_wait_seconds_count") == 1
    assert sorted(m["llm_proxy_breaker_open"], key=str) == [
        ({"path": "cache"}, 0.0),
        ({"path": "coalescing"}, 0.0),
    ]
    for kind in ("http_4xx", "http_5xx", "unreachable"):
        assert value(m, "llm_proxy_upstream_errors_total", kind=kind) >= 1, kind
    assert value(m, "process_resident_memory_bytes") > 0 and "process_cpu_seconds_total" in m

    text = http.get(f"{proxy.url}/metrics").body.decode()
    for family in ("llm_proxy_redis_errors", "llm_proxy_batch_efficiency"):
        assert f"# TYPE {family}" in text  # declared, even before its first sample


def test_label_values_stay_bounded(make_proxy: ProxyFactory, fake: Fake) -> None:
    # (an alias: /v1/models is the proxy's merged list, which the model label learns from)
    proxy = make_proxy(
        {"cache": {"enabled": False}, "routing": {"model_aliases": {"fast": "gpt-4o-mini"}}}
    )
    url = f"{proxy.base_url}/chat/completions"
    for i in range(30):
        http.post(url, {**CHAT, "model": f"made-up-{i}"})
        http.get(f"{proxy.base_url}/files/file-{i}/content")
        http.get(f"{proxy.base_url}/random-{i}")
    assert http.get(f"{proxy.base_url}/models").status == 200  # the upstream lists its models
    assert http.post(url, {**CHAT, "model": "gpt-4o"}).status == 200
    m = scrape(proxy.url)
    labels: list[dict[str, Any]] = [lab for lab, _ in m["llm_proxy_requests_total"]]
    models = {lab["model"] for lab in labels}
    routes = {lab["route"] for lab in labels}
    assert models == {"other", "none", "gpt-4o"}  # listed by the upstream: learned
    # (a route the proxy serves itself is labelled by its template)
    assert routes == {"/v1/chat/completions", "/v1/files/{file_id}/content", "other", "/v1/models"}
    assert not any(re.search(r"made-up|file-\d|random-", str(lab)) for lab in labels)


def test_model_label_cap_and_sources() -> None:
    settings = parse_settings(
        {
            "upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["a", "b-*"]}],
            "routing": {"model_aliases": {"fast": "a-large"}},
        },
        env={},
    )
    labels = ModelLabels(settings, cap=5)
    assert [labels.of(m) for m in ("a", "fast", "a-large", "b-1", None)] == [
        "a", "fast", "a-large", "other", "none",
    ]  # fmt: skip
    labels.learn(f"listed-{i}" for i in range(10))  # room for two more
    assert labels.of("listed-0") == "listed-0" and labels.of("listed-1") == "listed-1"
    assert labels.of("listed-2") == "other"


def test_requests_in_flight_counts_held_streams_then_none(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """The gauge moves once per loop turn: it shows requests that began and have not ended,
    also when none ends meanwhile."""
    proxy = make_proxy({"cache": {"enabled": False}})
    gate = bg.run(_new_event())
    bg.call(lambda: setattr(fake.state, "stream_gate", gate))
    url = f"{proxy.base_url}/chat/completions"

    def stream(i: int) -> int:
        body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": f"held {i}"}]}
        return http.post(url, body).status

    in_flight = "llm_proxy_requests_in_flight"
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(stream, i) for i in range(3)]
        wait_for(lambda: value(scrape(proxy.url), in_flight) == 3, what="3 requests in flight")
        bg.call(gate.set)
        assert [f.result() for f in held] == [200, 200, 200]
    wait_for(lambda: value(scrape(proxy.url), in_flight) == 0, what="none in flight")


async def _new_event() -> asyncio.Event:
    return asyncio.Event()
