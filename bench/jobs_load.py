"""Load for the job benchmarks, with the command line of `bench.loadgen` (so `bench.run` can
drive it for scenarios whose load is `job-submit` or `job-drain`).

Against the proxy (a target that serves `GET /v1/jobs`):
  job-submit  POST /v1/jobs one after another (latency of accepting a job);
  job-drain   first `count` synchronous chat requests through the proxy (`sync_elapsed_s`), then
              `count` jobs submitted at the same concurrency and polled until all completed
              (`elapsed_s` is submit-to-last-completion; `drain_ratio` = elapsed / sync).
Against the fake upstream (direct), both send synchronous chat requests: the baseline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import orjson

from bench._aio import run
from bench.loadgen import DEFAULT_HEADERS, driver_parser, percentile

_DONE = ("completed", "failed", "cancelled")


def _chat_body(key: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"job {key}"}]}


def _chat(key: str) -> bytes:
    return orjson.dumps(_chat_body(key))


async def _pool(concurrency: int, items: list[Any], fn: Any) -> None:
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await fn(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


class Load:
    def __init__(self, session: aiohttp.ClientSession, url: str, concurrency: int) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.concurrency = concurrency
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def fail(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    async def sync(self, keys: list[str]) -> float:
        async def one(key: str) -> None:
            start = time.perf_counter()
            async with self.session.post(f"{self.url}/chat/completions", data=_chat(key)) as r:
                await r.read()
                if r.status != 200:
                    self.fail(str(r.status))
                    return
            self.latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await _pool(self.concurrency, keys, one)
        return time.perf_counter() - start

    async def submit(self, keys: list[str], ids: list[str]) -> float:
        async def one(key: str) -> None:
            body = orjson.dumps(
                {"endpoint": "/v1/chat/completions", "body": orjson.loads(_chat(key))}
            )
            start = time.perf_counter()
            async with self.session.post(f"{self.url}/jobs", data=body) as r:
                raw = await r.read()
                if r.status != 202:
                    self.fail(str(r.status))
                    return
            self.latencies.append(time.perf_counter() - start)
            ids.append(orjson.loads(raw)["id"])

        start = time.perf_counter()
        await _pool(self.concurrency, keys, one)
        return time.perf_counter() - start

    async def drain(self, ids: list[str]) -> None:
        """Wait until every job is finished.

        Jobs run in arrival order, so the driver watches the newest pending one (a status read
        every 20 ms, like a patient client) and only then sweeps the rest: polling all 5,000
        in a loop would measure the status endpoint under load, not the drain.
        """
        pending = list(ids)
        while pending:
            newest: list[str] = []
            while True:
                await self._poll(pending[-1], newest)
                if not newest:
                    break
                newest.clear()
                await asyncio.sleep(0.02)
            still: list[str] = []
            await _pool(self.concurrency, pending, lambda job_id, s=still: self._poll(job_id, s))
            pending = still

    async def _poll(self, job_id: str, still: list[str]) -> None:
        async with self.session.get(f"{self.url}/jobs/{job_id}") as r:
            job = orjson.loads(await r.read())
        if job.get("status") not in _DONE:
            still.append(job_id)
        elif job["status"] != "completed":
            self.fail(job["status"])


async def _is_proxy(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url.rstrip('/')}/jobs?limit=1") as r:
        try:
            return r.status == 200 and (await r.json()).get("object") == "list"
        except (aiohttp.ContentTypeError, ValueError):
            return False


async def run_jobs(
    *, url: str, scenario: str, concurrency: int, count: int, warmup: int, after_warmup: str | None
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=max(concurrency, 100), limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, headers=DEFAULT_HEADERS) as session:
        proxy = await _is_proxy(session, url)
        load = Load(session, url, concurrency)
        warm = [f"warmup-{i}" for i in range(warmup)]
        if proxy and scenario == "job-submit":
            await load.submit(warm, [])
        else:
            await load.sync(warm)
        if after_warmup:
            async with session.post(after_warmup) as r:
                r.raise_for_status()
        load.latencies.clear()
        keys = [str(i) for i in range(count)]
        report: dict[str, Any] = {"scenario": scenario, "target_is_proxy": proxy}
        if not proxy:
            elapsed = await load.sync(keys)
        elif scenario == "job-submit":
            elapsed = await load.submit(keys, [])
        else:
            sync_s = await load.sync([f"sync-{k}" for k in keys])
            load.latencies.clear()
            ids: list[str] = []
            start = time.perf_counter()
            await load.submit(keys, ids)
            await load.drain(ids)
            elapsed = time.perf_counter() - start
            report.update(sync_elapsed_s=round(sync_s, 4), drain_ratio=round(elapsed / sync_s, 3))
    lat = load.latencies
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    report.update(
        concurrency=concurrency,
        count=count,
        ok=len(lat),
        elapsed_s=round(elapsed, 4),
        rps=round(count / elapsed, 1) if elapsed else None,
        p50_ms=ms(percentile(lat, 50)),
        p90_ms=ms(percentile(lat, 90)),
        p99_ms=ms(percentile(lat, 99)),
        errors=load.errors,
    )
    return report


def main(argv: list[str] | None = None) -> None:
    scenarios = ("job-submit", "job-drain")
    parser = driver_parser(__doc__ or "", scenarios, concurrency=1, count=1000, warmup=100)
    args = parser.parse_args(argv)
    report = run(
        run_jobs(
            url=args.url,
            scenario=args.scenario,
            concurrency=args.concurrency,
            count=args.count,
            warmup=args.warmup,
            after_warmup=args.after_warmup,
        )
    )
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
