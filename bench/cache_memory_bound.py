"""Memory bound of the response cache: many unique large answers through a real proxy.

Starts the fake upstream and a proxy (memory backend, ``--max-bytes``) in this process, sends
``--count`` unique embedding requests whose answers are ``--dimensions`` floats each (about
20 bytes per float as JSON), and reports what the cache holds against ``cache.max_bytes``: the
accounted bytes (values plus a fixed per-entry overhead), the raw value bytes, the entry count and
the growth of the process's resident memory.

    python -m bench.cache_memory_bound [--count 4000] [--max-bytes 33554432] [--dimensions 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
from typing import Any

import aiohttp
from aiohttp import web

from bench.fake_upstream import create_fake_upstream
from proxy.app import create_app
from proxy.cache.memory import MemoryBackend
from proxy.config import parse_settings
from proxy.keys import CACHE


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def run(*, count: int, max_bytes: int, dimensions: int, concurrency: int) -> dict[str, Any]:
    fake_runner, fake_port = await _serve(create_fake_upstream(record_requests=False))
    settings = parse_settings(
        {
            "upstreams": [
                {"name": "fake", "base_url": f"http://127.0.0.1:{fake_port}/v1", "models": ["*"]}
            ],
            "cache": {"max_bytes": max_bytes, "max_entries": 1_000_000},
            "batching": {"enabled": False},
        },
        env={},
    )
    app = create_app(settings)
    proxy_runner, proxy_port = await _serve(app)
    backend = app[CACHE].backend
    assert isinstance(backend, MemoryBackend)
    rss_start = _rss_bytes()
    answer_bytes = 0
    samples: list[int] = []
    url = f"http://127.0.0.1:{proxy_port}/v1/embeddings"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal answer_bytes
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": "text-embedding-3-small",
                "input": f"unique {i}",
                "dimensions": dimensions,
            }
            async with session.post(url, json=body) as resp:
                answer_bytes += len(await resp.read())
                assert resp.status == 200 and resp.headers["X-Cache"] == "MISS"
            if i % 100 == 0:
                samples.append(backend.bytes_held)

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-bound"}) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    held = backend.bytes_held
    values = sum(len(item.value) for item in backend._store.values())
    report = {
        "requests": count,
        "answer_bytes_total": answer_bytes,
        "max_bytes": max_bytes,
        "held_bytes": held,
        "held_over_max": round(held / max_bytes, 4),
        "peak_held_over_max": round(max(samples + [held]) / max_bytes, 4),
        "value_bytes": values,
        "entries": len(backend),
        "rss_growth_bytes": _rss_bytes() - rss_start,
    }
    await proxy_runner.cleanup()
    await fake_runner.cleanup()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--max-bytes", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--dimensions", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    report = asyncio.run(
        run(
            count=args.count,
            max_bytes=args.max_bytes,
            dimensions=args.dimensions,
            concurrency=args.concurrency,
        )
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
