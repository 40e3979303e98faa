"""Resident memory of the proxy while it takes in, runs and serves a large batch.

Starts a redis-server, the fake upstream and the proxy (files and batches in Redis) as
subprocesses, writes a JSONL file of about ``--mb`` MB of embeddings lines to disk, uploads it
streamed, runs it as a batch, downloads the output file streamed, and samples the proxy's
VmRSS every 50 ms. The target: the proxy's resident memory grows by less than the file's size.

    python -m bench.batch_memory [--mb 100] [--lines 48000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench._aio import run

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AUTH = {"Authorization": "Bearer sk-bench-memory"}
_DONE = ("completed", "failed", "expired", "cancelled")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


@contextlib.contextmanager
def _child(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "a child process died at start"
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


def write_input(path: Path, *, mb: int, lines: int) -> int:
    """``lines`` embeddings requests, padded to about ``mb`` MB in all."""
    pad = max(1, (mb * 1_000_000) // lines - 130)
    with path.open("wb") as out:
        for i in range(lines):
            body = {"model": "text-embedding-3-small", "input": f"{i} " + "x" * pad}
            line = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/embeddings"}
            out.write(orjson.dumps({**line, "body": body}) + b"\n")
    return path.stat().st_size


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as src:
        while chunk := src.read(256 * 1024):
            yield chunk


async def drive(url: str, path: Path, pid: int) -> dict[str, Any]:
    samples: list[int] = []
    phases: dict[str, float] = {}

    async def sample() -> None:
        while True:
            samples.append(_rss_kb(pid))
            await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as session:
        baseline_kb = _rss_kb(pid)
        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        with aiohttp.MultipartWriter("form-data") as form:
            part = form.append("batch")
            part.set_content_disposition("form-data", name="purpose")
            part = form.append(_file_chunks(path), {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename="big.jsonl")
            async with session.post(f"{url}/files", data=form) as r:
                uploaded = await r.json()
        phases["upload_s"] = time.perf_counter() - start
        create = {"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings"}
        async with session.post(f"{url}/batches", json={**create, "completion_window": "24h"}) as r:
            batch = await r.json()
        while batch["status"] not in _DONE:
            await asyncio.sleep(0.2)
            async with session.get(f"{url}/batches/{batch['id']}") as r:
                batch = await r.json()
        phases["run_s"] = time.perf_counter() - start - phases["upload_s"]
        output_bytes = 0
        async with session.get(f"{url}/files/{batch['output_file_id']}/content") as r:
            async for chunk in r.content.iter_chunked(256 * 1024):
                output_bytes += len(chunk)
        phases["download_s"] = time.perf_counter() - start - phases["upload_s"] - phases["run_s"]
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    peak_kb = max(samples + [_rss_kb(pid)])
    return {
        "file_bytes": uploaded["bytes"],
        "status": batch["status"],
        "request_counts": batch["request_counts"],
        "output_bytes": output_bytes,
        "rss_baseline_mb": round(baseline_kb / 1024, 1),
        "rss_peak_mb": round(peak_kb / 1024, 1),
        "rss_growth_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "rss_growth_over_file": round((peak_kb - baseline_kb) * 1024 / uploaded["bytes"], 3),
        **{k: round(v, 1) for k, v in phases.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--lines", type=int, default=48_000)
    args = parser.parse_args(argv)
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise SystemExit("redis-server is not on PATH")
    with (
        tempfile.TemporaryDirectory(prefix="llm-proxy-batch-mem-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        redis_port, fake_port, proxy_port = _free_port(), _free_port(), _free_port()
        redis = stack.enter_context(
            _child(
                [redis_exe, "--port", str(redis_port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                work / "redis.log",
            )
        )  # fmt: skip
        _wait_port(redis_port, redis)
        fake = stack.enter_context(
            _child(
                [sys.executable, "-m", "bench.fake_upstream", "--port", str(fake_port)],
                work / "fake.log",
            )
        )
        _wait_port(fake_port, fake)
        config = {
            "upstreams": [
                {"name": "fake", "base_url": f"http://{HOST}:{fake_port}/v1", "models": ["*"]}
            ],
            "cache": {"enabled": False},
            "redis": {"url": f"redis://{HOST}:{redis_port}/0"},
            "files": {"max_bytes": 2 * args.mb * 1_000_000},
            "batches": {"poll_interval_s": 0.1},
        }
        (work / "proxy.yaml").write_text(yaml.safe_dump(config))
        proxy = stack.enter_context(
            _child(
                [sys.executable, "-m", "proxy", "--config", str(work / "proxy.yaml"),
                 "--host", HOST, "--port", str(proxy_port)],
                work / "proxy.log",
            )
        )  # fmt: skip
        _wait_port(proxy_port, proxy)
        path = work / "input.jsonl"
        write_input(path, mb=args.mb, lines=args.lines)
        report = run(drive(f"http://{HOST}:{proxy_port}/v1", path, proxy.pid))
        report["proxy_log_tail"] = (work / "proxy.log").read_text()[-500:]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
