"""Load for the Batch API benchmark, with the command line of `bench.loadgen` (so `bench.run` can
drive it for scenarios whose load is `batch-embeddings`).

Against the proxy (a target that serves `GET /v1/batches`): `count` single-input embeddings
requests as the lines of one batch: upload the JSONL file, create the batch, poll it every
50 ms, download the output file and check that every `custom_id` is there once (`elapsed_s`
is upload to downloaded output). Against the fake upstream (direct): the same `count` requests
sent one per call, `concurrency` at a time: the baseline.
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
from bench.loadgen import DEFAULT_HEADERS, driver_parser

_DONE = ("completed", "failed", "expired", "cancelled")
_MODEL = "text-embedding-3-small"


def _body(key: str) -> dict[str, Any]:
    return {"model": _MODEL, "input": f"batch line {key}"}


async def _is_proxy(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url}/batches?limit=1") as r:
        try:
            return r.status == 200 and (await r.json()).get("object") == "list"
        except (aiohttp.ContentTypeError, ValueError):
            return False


async def _singles(
    session: aiohttp.ClientSession, url: str, keys: list[str], concurrency: int
) -> int:
    it = iter(keys)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for key in it:
            async with session.post(f"{url}/embeddings", data=orjson.dumps(_body(key))) as r:
                await r.read()
                ok += r.status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def _batch(session: aiohttp.ClientSession, url: str, keys: list[str]) -> dict[str, Any]:
    data = b"".join(
        orjson.dumps({"custom_id": k, "method": "POST", "url": "/v1/embeddings", "body": _body(k)})
        + b"\n"
        for k in keys
    )
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="input.jsonl", content_type="application/jsonl")
    # A session of its own: the main one sends Content-Type: application/json by default.
    auth = {"Authorization": DEFAULT_HEADERS["Authorization"]}
    async with aiohttp.ClientSession(headers=auth) as upload:
        async with upload.post(f"{url}/files", data=form) as r:
            file_id = (await r.json())["id"]
    create = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    async with session.post(f"{url}/batches", data=orjson.dumps(create)) as r:
        batch = await r.json()
    while batch["status"] not in _DONE:
        await asyncio.sleep(0.05)
        async with session.get(f"{url}/batches/{batch['id']}") as r:
            batch = await r.json()
    seen: list[str] = []
    if batch.get("output_file_id"):
        async with session.get(f"{url}/files/{batch['output_file_id']}/content") as r:
            for line in (await r.read()).splitlines():
                seen.append(orjson.loads(line)["custom_id"])
    return {"status": batch["status"], "ok": len(seen), "unique": len(set(seen))}


async def run_batch(
    *, url: str, concurrency: int, count: int, warmup: int, after_warmup: str | None
) -> dict[str, Any]:
    url = url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=max(concurrency, 100), limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, headers=DEFAULT_HEADERS) as session:
        proxy = await _is_proxy(session, url)
        await _singles(session, url, [f"warmup-{i}" for i in range(warmup)], concurrency)
        if after_warmup:
            async with session.post(after_warmup) as r:
                r.raise_for_status()
        keys = [str(i) for i in range(count)]
        report: dict[str, Any] = {"scenario": "batch-embeddings", "target_is_proxy": proxy}
        start = time.perf_counter()
        if proxy:
            outcome = await _batch(session, url, keys)
            report.update(batch_status=outcome["status"], unique=outcome["unique"])
            ok = outcome["ok"]
        else:
            ok = await _singles(session, url, keys, concurrency)
        elapsed = time.perf_counter() - start
    report.update(
        concurrency=concurrency,
        count=count,
        ok=ok,
        elapsed_s=round(elapsed, 4),
        rps=round(count / elapsed, 1) if elapsed else None,
        errors={} if ok == count else {"missing": count - ok},
    )
    return report


def main(argv: list[str] | None = None) -> None:
    scenarios = ("batch-embeddings",)
    parser = driver_parser(__doc__ or "", scenarios, concurrency=4, count=10_000, warmup=0)
    args = parser.parse_args(argv)
    report = run(
        run_batch(
            url=args.url,
            concurrency=args.concurrency,
            count=args.count,
            warmup=args.warmup,
            after_warmup=args.after_warmup,
        )
    )
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
