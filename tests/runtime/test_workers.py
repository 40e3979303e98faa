"""``--workers N``: one port, N processes, one supervisor that replaces, signals and reports."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_settings
from tests.conftest import Fake
from tests.runtime.conftest import Start
from tests.runtime.procs import ProxyProcess, wait_until, write_config
from tests.support import http
from tests.support.redis_server import free_port

STARTED = r"worker (\d) started \(pid (\d+)\)"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "which worker?"}]}


def config(port: int, fake: Fake, **sections: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 10},
        "upstreams": [{"name": "fake", "base_url": fake.url}],
        "jobs": {"enabled": False},
        "batches": {"mode": "passthrough"},
        **sections,
    }


def start_workers(start_proxy: Start, path: Path, port: int, count: int = 2) -> ProxyProcess:
    proc = start_proxy("--config", str(path), "--workers", str(count))
    proc.wait_log("listening on", count=count)
    return proc


def live_pids(port: int) -> set[str]:
    scrape = http.get(f"http://127.0.0.1:{port}/metrics").body.decode()
    return set(re.findall(r'llm_proxy_process_up\{pid="(\d+)"\} 1\.0', scrape))


def sample(port: int, name: str) -> float:
    scrape = http.get(f"http://127.0.0.1:{port}/metrics").body.decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", scrape, re.M))


def test_two_workers_share_a_port_and_one_scrape_counts_both(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    port = free_port()
    path = write_config(tmp_path / "c.yaml", config(port, fake))
    proc = start_workers(start_proxy, path, port)
    pids = {int(m.group(2)) for m in proc.matches(STARTED)}
    assert len(pids) == 2
    # The workers share stderr: each one's lines say which process wrote them (JSON here, as
    # stderr is no terminal).
    for pid in pids:
        assert proc.matches(rf'"pid":{pid},"message":"llm-proxy listening on')
    assert proc.matches("each of the 2 workers has its own cache")
    assert not proc.matches("remembers only the responses it made")  # one upstream: no matter
    # Any scrape, answered by either worker, lists both.
    assert live_pids(port) == {str(p) for p in pids}

    # Each worker has its own memory cache: one request body misses once per worker. Every
    # request on a new connection, which the kernel gives to either worker; one scrape sums them.
    sent = 0

    def both_missed() -> bool:
        nonlocal sent
        assert http.post(f"http://127.0.0.1:{port}/v1/chat/completions", CHAT).status == 200
        sent += 1
        return sample(port, "llm_proxy_cache_misses_total") == 2

    wait_until(both_missed, "a miss in each worker")
    assert sample(port, "llm_proxy_cache_hits_total") == sent - 2
    # /stats and the hit ratio, answered by either worker, count both as the scrape does.
    for _ in range(4):
        stats = http.get(f"http://127.0.0.1:{port}/stats").json()
        assert stats["requests"]["total"] == stats["cache"]["cacheable"] == sent
        assert stats["cache"]["hits"] == sent - 2
        assert stats["cache"]["hit_ratio"] == (sent - 2) / sent
        assert sample(port, "llm_proxy_cache_hit_ratio") == (sent - 2) / sent

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0, proc.log()
    assert len(proc.matches("SIGTERM: draining")) == 2
    metrics_dir = proc.matches(r"metrics are kept in (\S+)")[0].group(1)
    assert not os.path.exists(metrics_dir)


def test_a_killed_worker_is_replaced(tmp_path: Path, fake: Fake, start_proxy: Start) -> None:
    port = free_port()
    path = write_config(tmp_path / "c.yaml", config(port, fake))
    proc = start_workers(start_proxy, path, port)
    first = {m.group(1): int(m.group(2)) for m in proc.matches(STARTED)}
    os.kill(first["0"], signal.SIGKILL)

    proc.wait_log(r"worker 0 \(pid \d+\) exited with signal SIGKILL; starting a new one in")
    proc.wait_log(STARTED, count=3)
    replacement = int(proc.matches(STARTED)[-1].group(2))
    assert proc.matches(STARTED)[-1].group(1) == "0" and replacement != first["0"]
    proc.wait_log("listening on", count=3)
    wait_until(lambda: live_pids(port) == {str(replacement), str(first["1"])}, "new worker listed")
    assert http.post(f"http://127.0.0.1:{port}/v1/chat/completions", CHAT).status == 200

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0, proc.log()


def test_supervisor_checks_a_reload_once_then_signals_every_worker(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    port = free_port()
    second = {"name": "second", "base_url": fake.url, "models": ["gpt-4o-mini"]}
    upstreams = [{"name": "fake", "base_url": fake.url}, second]
    path = write_config(tmp_path / "c.yaml", config(port, fake, upstreams=upstreams))
    proc = start_workers(start_proxy, path, port)
    # Where each stored response was made is in each worker's memory: said once, at the start.
    assert len(proc.matches("remembers only the responses it made")) == 1

    path.write_text("cache:\n  max_entries: many\n")
    proc.signal(signal.SIGHUP)
    proc.wait_log("reload refused, the workers keep the previous config")
    assert len(proc.matches("reload refused")) == 1  # no worker was asked
    assert http.get(f"http://127.0.0.1:{port}/readyz").status == 200
    # Valid, but not for two workers: jobs in each worker's memory.
    write_config(path, config(port, fake, jobs={"enabled": True}))
    proc.signal(signal.SIGHUP)
    proc.wait_log("reload refused", count=2)
    assert "need a shared job store" in proc.matches("reload refused")[-1].string

    write_config(path, config(port, fake, routing={"model_aliases": {"fast": "gpt-4o-mini"}}))
    proc.signal(signal.SIGHUP)
    proc.wait_log("config reloaded", count=2)
    for _ in range(4):  # whichever worker answers has the alias
        body = {**CHAT, "model": "fast"}
        answer = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", body)
        assert answer.status == 200 and answer.json()["model"] == "gpt-4o-mini"

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0, proc.log()


def test_memory_files_and_batches_are_refused_with_workers(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    """Jobs off, batches emulated without Redis: each worker would keep its own files."""
    path = write_config(tmp_path / "c.yaml", config(free_port(), fake, batches={}))
    proc = start_proxy("--config", str(path), "--workers", "2")
    assert proc.wait_exit() == 2
    assert "redis.url" in proc.log() and "batches.mode: passthrough" in proc.log()
    assert not proc.matches("started")


def test_memory_job_store_is_refused_with_workers(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    path = write_config(tmp_path / "c.yaml", config(free_port(), fake, jobs={"enabled": True}))
    proc = start_proxy("--config", str(path), "--workers", "2")
    assert proc.wait_exit() == 2
    assert "redis.url" in proc.log() and "jobs.enabled: false" in proc.log()
    assert not proc.matches("started")


def test_workers_auto_is_the_cpus_this_process_may_use() -> None:
    settings = parse_settings({"server": {"workers": "auto"}}, env={})
    assert settings.server.worker_count == len(os.sched_getaffinity(0))
    assert parse_settings({}, env={}).server.worker_count == 1
    with pytest.raises(ConfigError, match="server.workers"):
        parse_settings({"server": {"workers": 0}}, env={})


def test_workers_that_cannot_listen_stop_the_supervisor(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: the workers cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path / "c.yaml", config(port, fake))
        proc = start_proxy("--config", str(path), "--workers", "2")
        assert proc.wait_exit() == 2, proc.log()
    assert proc.matches("cannot listen on")
    assert proc.matches("cannot start")


def test_server_workers_in_the_file(tmp_path: Path, fake: Fake, start_proxy: Start) -> None:
    """``server.workers: 2`` in the file starts the supervisor as ``--workers 2`` does."""
    port = free_port()
    cfg = config(port, fake)
    cfg["server"]["workers"] = 2
    path = write_config(tmp_path / "c.yaml", cfg)
    proc = start_proxy("--config", str(path))
    proc.wait_log("listening on", count=2)
    proc.signal(signal.SIGINT)
    assert proc.wait_exit() == 0, proc.log()
