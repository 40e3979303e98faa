"""Signals under load: SIGHUP reloads or a SIGTERM while clients keep sending, failures counted.

Starts the fake upstream and the proxy (any extra proxy arguments, e.g. ``--workers 2``), keeps
``concurrency`` clients sending distinct chat completions over kept-alive connections, and

- ``--mode reload``: rewrites the config file (a model alias toggles) and sends SIGHUP
  ``--reloads`` times, evenly over ``--duration-s``; every request must succeed;
- ``--mode stop``: sends SIGTERM after ``--stop-after-s``; every request sent before the signal
  must succeed (those sent after it may be refused: the port is closed), and the proxy must exit 0.

    python -m bench.signals --mode reload [--duration-s 20] [--reloads 10] [--proxy-arg=--workers]
        [--proxy-arg=2] [--concurrency 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._aio import run
from bench._proc import free_port, stop_group, wait_http

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass
class Outcome:
    sent: int = 0
    ok: int = 0
    #: Failures of requests sent before a SIGTERM (all failures in reload mode), by kind.
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Requests sent after a SIGTERM that were refused (expected: the port is closed).
    refused_after_stop: int = 0
    reloads: int = 0
    #: "config reloaded" lines in the proxy's log (one per worker and reload).
    applied: int = 0
    exit_code: int | None = None

    def report(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": sum(self.failed.values()),
            "failures": dict(self.failed),
            "refused_after_stop": self.refused_after_stop,
            "reloads": self.reloads,
            "applied": self.applied,
            "proxy_exit_code": self.exit_code,
        }


def proxy_config(upstream_port: int, port: int, alias: str) -> dict[str, Any]:
    """The default pass-through config (coalescing and batching on, cache off), no jobs and no
    emulated batches (so that any number of workers may run without Redis)."""
    return {
        "server": {"host": HOST, "port": port, "shutdown_timeout_s": 30},
        "upstreams": [{"name": "fake", "base_url": f"http://{HOST}:{upstream_port}/v1"}],
        "routing": {"model_aliases": {"fast": alias}},
        "cache": {"enabled": False},
        "jobs": {"enabled": False},
        "batches": {"mode": "passthrough"},
    }


async def _client(
    session: aiohttp.ClientSession, url: str, name: int, out: Outcome, state: dict[str, Any]
) -> None:
    n = 0
    while not state["done"]:
        n += 1
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"c{name} r{n}"}]}
        stopped_before = state["stopped_at"] is not None
        out.sent += 1
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            if stopped_before:
                out.refused_after_stop += 1
                if state["stopped_at"] is not None:
                    await asyncio.sleep(0.01)  # the port is closed: do not spin
                continue
            out.failed[type(exc).__name__] += 1
            continue
        if status == 200:
            out.ok += 1
        else:
            out.failed[f"HTTP {status}"] += 1


async def _load(
    url: str, concurrency: int, out: Outcome, state: dict[str, Any], driver: Any
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:
        clients = [asyncio.create_task(_client(s, url, i, out, state)) for i in range(concurrency)]
        try:
            await driver()
        finally:
            state["done"] = True
            await asyncio.gather(*clients)


def run_signals(
    *,
    mode: str,
    duration_s: float = 20.0,
    reloads: int = 10,
    stop_after_s: float = 5.0,
    concurrency: int = 64,
    proxy_args: list[str] | None = None,
    python: str = sys.executable,
) -> Outcome:
    """One run; the outcome (see the module docstring)."""
    out = Outcome()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with (
        tempfile.TemporaryDirectory(prefix="llm-proxy-signals-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        up_port, port = free_port(), free_port()
        upstream = subprocess.Popen(
            [python, "-m", "bench.fake_upstream", "--host", HOST, "--port", str(up_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop_group, upstream)
        wait_http(f"http://{HOST}:{up_port}/v1/models", upstream)
        config = Path(tmp) / "proxy.yaml"
        config.write_text(yaml.safe_dump(proxy_config(up_port, port, "gpt-4o")))
        log = (Path(tmp) / "proxy.log").open("wb")
        stack.callback(log.close)
        proxy = subprocess.Popen(
            [python, "-m", "proxy", "--config", str(config), *(proxy_args or [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(stop_group, proxy)
        wait_http(f"http://{HOST}:{port}/healthz", proxy)
        state: dict[str, Any] = {"done": False, "stopped_at": None}

        async def reload_driver() -> None:
            interval = duration_s / (reloads + 1)
            for i in range(reloads):
                await asyncio.sleep(interval)
                alias = "gpt-4o-mini" if i % 2 == 0 else "gpt-4o"
                config.write_text(yaml.safe_dump(proxy_config(up_port, port, alias)))
                proxy.send_signal(signal.SIGHUP)
                out.reloads += 1
            await asyncio.sleep(interval)

        async def stop_driver() -> None:
            await asyncio.sleep(stop_after_s)
            state["stopped_at"] = time.monotonic()
            proxy.send_signal(signal.SIGTERM)
            while proxy.poll() is None:
                await asyncio.sleep(0.05)

        driver = reload_driver if mode == "reload" else stop_driver
        run(_load(f"http://{HOST}:{port}/v1/chat/completions", concurrency, out, state, driver))
        if mode == "stop":
            out.exit_code = proxy.wait(60)
        log.flush()
        text = (Path(tmp) / "proxy.log").read_text(errors="replace")
        out.applied = text.count("config reloaded")
        if mode == "reload" and "reload refused" in text:
            out.failed["reload refused"] += text.count("reload refused")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["reload", "stop"], required=True)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--stop-after-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--proxy-arg", action="append", default=[])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run_signals(
        mode=args.mode,
        duration_s=args.duration_s,
        reloads=args.reloads,
        stop_after_s=args.stop_after_s,
        concurrency=args.concurrency,
        proxy_args=args.proxy_arg,
        python=args.python,
    )
    report = out.report()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    failed = report["failed"] or (args.mode == "stop" and out.exit_code != 0)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
