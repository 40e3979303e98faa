"""Health, readiness and the real command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Fake, Proxy, ProxyFactory
from tests.support import http
from tests.support.redis_server import RedisServer, free_port


def test_healthz_and_readyz(proxy: Proxy) -> None:
    assert http.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{proxy.url}/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"


def test_readyz_follows_redis_in_the_strict_form(
    make_proxy: ProxyFactory, redis_server: RedisServer, redis_url: str
) -> None:
    """``server.ready_requires_redis: true``: not ready while Redis is away (the default form is
    in tests/core/test_readiness.py)."""
    proxy = make_proxy({"redis": {"url": redis_url}, "server": {"ready_requires_redis": True}})
    assert http.get(f"{proxy.url}/readyz").status == 200
    redis_server.kill()
    try:
        down = http.get(f"{proxy.url}/readyz")
        assert down.status == 503
        assert {"redis", "jobs"} <= set(down.json()["problems"])
        # Liveness does not depend on Redis.
        assert http.get(f"{proxy.url}/healthz").status == 200
    finally:
        redis_server.start()
    assert http.get(f"{proxy.url}/readyz").status == 200


def test_readyz_answers_when_redis_accepts_but_never_replies(make_proxy: ProxyFactory) -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        for strict, status in ((False, 200), (True, 503)):
            proxy = make_proxy(
                {
                    "redis": {"url": url},
                    "jobs": {"store": "memory"},
                    "server": {"ready_requires_redis": strict},
                }
            )
            started = time.monotonic()
            down = http.get(f"{proxy.url}/readyz", timeout=10)
            assert down.status == status and "redis" in down.json()["degraded"]
            assert time.monotonic() - started < 3  # about readiness.CHECK_TIMEOUT_S (1 s)


def test_metrics_endpoint_counts_upstream_errors(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy(
        {"upstreams": [{"name": "gone", "base_url": f"http://127.0.0.1:{free_port()}/v1"}]}
    )
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    assert http.post(f"{proxy.base_url}/chat/completions", chat).status == 502
    raw = http.get(f"{proxy.url}/metrics")
    assert raw.status == 200
    line = 'llm_proxy_upstream_errors_total{kind="unreachable",upstream="gone"} 1.0'
    assert line in raw.body.decode()


def test_cli_serves_with_a_config_file(tmp_path: Path, fake: Fake) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstreams:\n  - name: fake\n    base_url: {fake.url}\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if http.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.05)
        raw = http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "cli"}]},
        )
        assert raw.json()["choices"][0]["message"]["content"] == "echo: cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
