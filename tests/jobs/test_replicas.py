"""Real proxy processes sharing one Redis: SIGKILL mid-work, and any replica answers for a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Fake
from tests.jobs.conftest import CHAT, finished, http, wait_for
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


class ProxyProcess:
    def __init__(self, tmp: Path, name: str, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = (tmp / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(path), "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

        def up() -> bool:
            assert self.proc.poll() is None, (tmp / f"{name}.log").read_text()
            return (
                http("GET", f"{self.url}/healthz", key=None).status == 200
                if _listening(self.port)
                else False
            )

        wait_for(up, timeout_s=30, what=f"{name} to start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def processes(tmp_path: Path, fake: Fake, redis_url: str) -> Iterator[Any]:
    started: list[ProxyProcess] = []

    def start(name: str, jobs: dict[str, Any] | None = None) -> ProxyProcess:
        config = {
            "upstreams": [{"name": "fake", "base_url": fake.url, "models": ["*"]}],
            "cache": {"enabled": False},
            "redis": {"url": redis_url},
            "jobs": {"poll_interval_s": 0.1, "backoff_base_s": 0.01, **(jobs or {})},
        }
        proc = ProxyProcess(tmp_path, name, config)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_sigkill_with_queued_and_running_jobs_then_restart(
    processes: Any, fake: Fake, redis_server: RedisServer
) -> None:
    fake.state.latency_ms = 200
    jobs = {"lease_s": 2, "concurrency": 16}
    a = processes("a", jobs)
    ids = []
    for i in range(100):
        body = {**CHAT, "messages": [{"role": "user", "content": f"job {i}"}]}
        resp = http("POST", f"{a.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": body})
        assert resp.status == 202
        ids.append(resp.json()["id"])
    wait_for(lambda: fake.state.calls["/v1/chat/completions"] >= 40, what="work to be under way")
    a.kill()
    b = processes("b", jobs)
    states = [http("GET", f"{b.url}/v1/jobs/{i}").json()["status"] for i in ids]
    assert "completed" in states and any(s != "completed" for s in states), states
    done = [finished(b.url, i, timeout_s=40) for i in ids]
    assert all(j["status"] == "completed" for j in done)
    client = redis_server.client()
    try:
        writes = [int(client.hget(f"{{llmproxy:jobs}}:job:{i}", "writes") or 0) for i in ids]
    finally:
        client.close()
    assert writes == [1] * 100
    assert fake.state.calls["/v1/chat/completions"] >= 100  # at least once each


def test_submit_on_one_replica_read_list_and_cancel_on_another(processes: Any) -> None:
    a, b = processes("a"), processes("b")
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "run_after": time.time() + 60}
    job = http("POST", f"{a.url}/v1/jobs", body).json()
    seen = http("GET", f"{b.url}/v1/jobs/{job['id']}")
    assert seen.status == 200 and seen.json() == job
    assert [j["id"] for j in http("GET", f"{b.url}/v1/jobs").json()["data"]] == [job["id"]]
    cancelled = http("POST", f"{b.url}/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert http("GET", f"{a.url}/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    now = http("POST", f"{a.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    assert finished(b.url, now.json()["id"])["status"] == "completed"


def test_cancel_on_one_replica_aborts_a_job_running_on_another(processes: Any, fake: Fake) -> None:
    a = processes("a")
    fake.state.latency_ms = 30_000
    job = http("POST", f"{a.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    wait_for(lambda: fake.state.in_flight == 1, what="the upstream call to start")
    b = processes("b", {"concurrency": 1})
    fake.state.latency_ms = 0
    resp = http("POST", f"{b.url}/v1/jobs/{job.json()['id']}/cancel")
    assert resp.json()["status"] == "cancelled"
    wait_for(lambda: fake.state.in_flight == 0, what="the running call to be aborted")
