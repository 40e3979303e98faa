"""HTTP load generator for OpenAI-compatible endpoints.

`concurrency` workers share one `ClientSession` and send `count` requests between them. Bodies are
unique by default (a counter in the prompt), identical with `--repeat`, or `--distinct N` bodies
cycled. Reports throughput, latency percentiles and, for streams, time to the first SSE data
chunk and the gaps between chunks.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1 --scenario chat --concurrency 64 \\
        --count 5000 [--repeat | --distinct N] [--warmup 200] [--header K:V ...] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench._aio import run

DEFAULT_HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


@dataclass(frozen=True)
class LoadScenario:
    """What one request of a scenario looks like: a path and a body built from a key."""

    path: str
    body: Callable[[str, int], dict[str, Any]]  # (key, inputs per request) -> JSON body
    stream: bool = False


def _chat_body(key: str, inputs: int) -> dict[str, Any]:
    content = f"hello world request {key}"
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def _stream_body(key: str, inputs: int) -> dict[str, Any]:
    return {**_chat_body(key, inputs), "stream": True}


def _embeddings_body(key: str, inputs: int) -> dict[str, Any]:
    texts = [f"embed text {key} part {i}" for i in range(inputs)]
    return {"model": "text-embedding-3-small", "input": texts[0] if inputs == 1 else texts}


def _responses_body(key: str, inputs: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": f"hello world request {key}"}


SCENARIOS: dict[str, LoadScenario] = {
    "chat": LoadScenario("/chat/completions", _chat_body),
    "stream": LoadScenario("/chat/completions", _stream_body, stream=True),
    "embeddings": LoadScenario("/embeddings", _embeddings_body),
    "responses": LoadScenario("/responses", _responses_body),
}


@dataclass
class _Samples:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, reason: str) -> None:
        self.errors[reason] += 1


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]) of unsorted `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _keys(*, count: int, repeat: bool, distinct: int | None, prefix: str) -> Iterator[str]:
    for i in range(count):
        if repeat:
            yield "0"
        elif distinct:
            yield str(i % distinct)
        else:
            yield f"{prefix}{i}"


async def _plain(session: aiohttp.ClientSession, url: str, body: bytes, samples: _Samples) -> None:
    start = time.perf_counter()
    async with session.post(url, data=body) as response:
        await response.read()
        status = response.status
    if status == 200:
        samples.latencies.append(time.perf_counter() - start)
    else:
        samples.fail(str(status))


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes, samples: _Samples) -> None:
    start = time.perf_counter()
    first = last = 0.0
    gaps: list[float] = []
    done = False
    async with session.post(url, data=body) as response:
        if response.status != 200:
            await response.read()
            samples.fail(str(response.status))
            return
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter()
            if first:
                gaps.append(now - last)
            else:
                first = now
            last = now
            done = line.startswith(b"data: [DONE]")
    if not done:
        samples.fail("incomplete-stream")
        return
    samples.latencies.append(last - start)
    samples.ttfbs.append(first - start)
    samples.gaps.extend(gaps)


async def _phase(
    session: aiohttp.ClientSession,
    *,
    url: str,
    scenario: LoadScenario,
    keys: Iterator[str],
    concurrency: int,
    inputs: int,
) -> _Samples:
    samples = _Samples()
    send = _stream if scenario.stream else _plain

    async def worker() -> None:
        for key in keys:  # one iterator shared by all workers
            body = orjson.dumps(scenario.body(key, inputs))
            try:
                await send(session, url, body, samples)
            except (TimeoutError, aiohttp.ClientError) as exc:
                samples.fail(type(exc).__name__)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _report(
    samples: _Samples, *, scenario: str, concurrency: int, count: int, elapsed_s: float
) -> dict[str, Any]:
    ok = len(samples.latencies)
    lat, ttfb, gaps = samples.latencies, samples.ttfbs, samples.gaps
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "count": count,
        "ok": ok,
        "elapsed_s": round(elapsed_s, 4),
        "rps": round(ok / elapsed_s, 1) if elapsed_s > 0 else None,
        "mean_ms": _ms(sum(lat) / ok) if ok else None,
        "p50_ms": _ms(percentile(lat, 50)),
        "p90_ms": _ms(percentile(lat, 90)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat)) if lat else None,
        "ttfb_p50_ms": _ms(percentile(ttfb, 50)),
        "ttfb_p90_ms": _ms(percentile(ttfb, 90)),
        "ttfb_p99_ms": _ms(percentile(ttfb, 99)),
        "gap_p50_ms": _ms(percentile(gaps, 50)),
        "gap_p90_ms": _ms(percentile(gaps, 90)),
        "errors": dict(samples.errors),
    }


async def run_load(
    *,
    url: str,
    scenario: str,
    concurrency: int,
    count: int,
    repeat: bool = False,
    distinct: int | None = None,
    warmup: int = 0,
    headers: dict[str, str] | None = None,
    inputs: int = 1,
    timeout_s: float = 60.0,
    after_warmup_url: str | None = None,
) -> dict[str, Any]:
    """Send `count` requests of `scenario` to the API at base `url` (".../v1") and report.

    `warmup` requests go first and are not measured; with `repeat`/`distinct` they use the same
    bodies as the measured run (so a cache is warm), otherwise bodies of their own. When
    `after_warmup_url` is given it is POSTed once between warmup and measurement (the benchmark
    runner points it at the fake upstream's `/_fake/reset`).
    """
    spec = SCENARIOS[scenario]
    target = url.rstrip("/") + spec.path
    connector = aiohttp.TCPConnector(limit=max(concurrency, 100), limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={**DEFAULT_HEADERS, **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as session:
        phase_args: dict[str, Any] = {
            "url": target,
            "scenario": spec,
            "concurrency": concurrency,
            "inputs": inputs,
        }
        if warmup:
            keys = _keys(count=warmup, repeat=repeat, distinct=distinct, prefix="warmup-")
            await _phase(session, keys=keys, **phase_args)
        if after_warmup_url:
            async with session.post(after_warmup_url) as response:
                response.raise_for_status()
        keys = _keys(count=count, repeat=repeat, distinct=distinct, prefix="")
        start = time.perf_counter()
        samples = await _phase(session, keys=keys, **phase_args)
        elapsed_s = time.perf_counter() - start
    return _report(
        samples, scenario=scenario, concurrency=concurrency, count=count, elapsed_s=elapsed_s
    )


def summary_line(report: dict[str, Any]) -> str:
    """One human-readable line for a `run_load` report."""

    def fmt(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else f"{value:.2f}"

    errors = ", ".join(f"{k}: {v}" for k, v in sorted(report["errors"].items())) or "none"
    line = (
        f"{report['scenario']} c={report['concurrency']} n={report['count']}: "
        f"{report['rps']} req/s, p50 {fmt('p50_ms')} ms, p90 {fmt('p90_ms')} ms, "
        f"p99 {fmt('p99_ms')} ms"
    )
    if report.get("ttfb_p50_ms") is not None:
        line += f", ttfb p50 {fmt('ttfb_p50_ms')} ms, gap p50 {fmt('gap_p50_ms')} ms"
    return f"{line}, errors: {errors}"


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected K:V, got {text!r}")
    return name.strip(), value.strip()


def driver_parser(
    doc: str, scenarios: tuple[str, ...], *, concurrency: int, count: int, warmup: int
) -> argparse.ArgumentParser:
    """The command line of a driver that ``bench.run`` starts in loadgen's place (jobs, batches):
    loadgen's options, those it does not use accepted and ignored."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add = parser.add_argument
    add("--url", required=True)
    add("--scenario", choices=scenarios, required=True)
    add("--concurrency", type=int, default=concurrency)
    add("--count", type=int, default=count)
    add("--warmup", type=int, default=warmup)
    add("--after-warmup")
    add("--json", action="store_true")
    # Accepted for `bench.run`'s loadgen command line; not used here.
    add("--inputs", type=int)
    add("--header", action="append", default=[])
    add("--repeat", action="store_true")
    add("--distinct", type=int)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="API base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="chat")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000)
    bodies = parser.add_mutually_exclusive_group()
    bodies.add_argument("--repeat", action="store_true", help="send the same body every time")
    bodies.add_argument("--distinct", type=int, help="cycle through N distinct bodies")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--inputs", type=int, default=1, help="inputs per embeddings request")
    parser.add_argument("--header", type=_header, action="append", default=[], metavar="K:V")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--after-warmup", metavar="URL", help="POST to URL after the warmup")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    args = parser.parse_args(argv)
    report = run(
        run_load(
            url=args.url,
            scenario=args.scenario,
            concurrency=args.concurrency,
            count=args.count,
            repeat=args.repeat,
            distinct=args.distinct,
            warmup=args.warmup,
            headers=dict(args.header),
            inputs=args.inputs,
            timeout_s=args.timeout_s,
            after_warmup_url=args.after_warmup,
        )
    )
    sys.stdout.write((json.dumps(report) if args.json else summary_line(report)) + "\n")


if __name__ == "__main__":
    main()
