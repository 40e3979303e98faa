"""Take docs/dashboard.png: the dashboard in headless Chromium after a minute of mixed traffic.

    python -m bench.dashboard_shot [--out docs/dashboard.png] [--seconds 20]

Starts the fake upstream and a proxy in this process (memory cache, batching, jobs), sends a mix
of misses, hits, identical requests in flight, small embeddings (batched), streams, refusals and
jobs while Chromium keeps the page open, then saves the screenshot.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.fake_upstream import STATE, create_fake_upstream
from proxy.app import create_app
from proxy.config import parse_settings
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp


def _request(rng: random.Random, base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """One request of the mix: url, body, headers."""
    kind = rng.random()
    chat = f"{base}/chat/completions"
    if kind < 0.45:  # misses and hits
        text = f"question {rng.randrange(40)}"
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [_user(text)]}
        return chat, {**body, "stream": rng.random() < 0.2}, {}
    if kind < 0.8:  # small embeddings: batched
        return f"{base}/embeddings", {"model": "text-embedding-3-small", "input": f"t{kind}"}, {}
    if kind < 0.95:  # identical requests in flight together
        same = {"model": "gpt-4o", "messages": [_user("same")]}
        return chat, same, {"Cache-Control": "no-store"} if rng.random() < 0.5 else {}
    if kind < 0.98:  # refused by the upstream
        return chat, {"model": "no-such-model", "messages": []}, {}
    job = {"model": "gpt-4o-mini", "messages": [_user(f"job {kind}")]}
    return f"{base}/jobs", {"endpoint": "/v1/chat/completions", "body": job}, {}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _traffic(base: str, stop: threading.Event) -> None:
    rng = random.Random(7)
    with ThreadPoolExecutor(16) as pool:
        while not stop.is_set():
            sent = [pool.submit(http.post, *_request(rng, base)) for _ in range(24)]
            for future in sent:
                future.result()
            time.sleep(rng.uniform(0.05, 0.3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--seconds", type=float, default=180.0, help="virtual time of the page")
    args = parser.parse_args()
    bg = BackgroundLoop()
    fake = LiveApp(bg, create_fake_upstream()).start()
    bg.call(lambda: setattr(fake.app[STATE], "latency_ms", 40.0))
    bg.call(lambda: setattr(fake.app[STATE], "record_requests", False))
    settings = parse_settings(
        {
            "server": {"access_log": False},
            "upstreams": [{"name": "fake", "base_url": f"{fake.url}/v1", "models": ["*"]}],
            "batching": {"embeddings": {"max_wait_ms": 20}},
        },
        env={},
    )
    proxy = LiveApp(bg, create_app(settings)).start()
    stop = threading.Event()
    driver = threading.Thread(target=_traffic, args=(f"{proxy.url}/v1", stop))
    driver.start()
    try:
        time.sleep(3)  # some history before the page opens
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    "/usr/bin/chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--window-size=1280,1000",
                    "--hide-scrollbars",
                    f"--virtual-time-budget={int(args.seconds * 1000)}",
                    f"--screenshot={Path(args.out).resolve()}",
                    f"{proxy.url}/dashboard",
                ],  # fmt: skip
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
    finally:
        stop.set()
        driver.join()
        proxy.stop()
        fake.stop()
        bg.close()


if __name__ == "__main__":
    main()
