"""SIGTERM/SIGINT: stop accepting at once, let requests and streams in flight finish, exit 0."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import threading
from pathlib import Path

import pytest

from proxy.keys import DRAINING
from tests.conftest import Fake, Proxy
from tests.runtime.conftest import Start
from tests.runtime.procs import refuses_connections, wait_until, write_config
from tests.support import http as raw
from tests.support.redis_server import free_port


class Stream:
    """A streamed chat completion read in a thread: its status, then every byte to the end."""

    def __init__(self, port: int, text: str, key: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": text}],
        }
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self.conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        self.response = self.conn.getresponse()  # the headers: the stream has begun
        self.body = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.body = self.response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc
        finally:
            self.conn.close()

    def result(self) -> bytes:
        self.thread.join(60)
        assert self.error is None, self.error
        return self.body


@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-2-workers"],
)
def test_stop_lets_streams_in_flight_finish(
    sig: signal.Signals, workers: int, tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    gate = asyncio.Event()
    fake.state.stream_gate = gate  # each stream holds after its first event until the gate opens
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        {
            "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 30},
            "upstreams": [{"name": "fake", "base_url": fake.url}],
            "cache": {"enabled": False},
            "jobs": {"enabled": workers == 1},
            "batches": {"mode": "emulate" if workers == 1 else "passthrough"},
        },
    )
    proc = start_proxy("--config", str(config), "--workers", str(workers))
    proc.wait_log("listening on", count=workers)
    streams = [Stream(port, f"stream {i}") for i in range(6)]
    assert all(s.response.status == 200 for s in streams)

    proc.signal(sig)
    proc.wait_log("draining", count=workers)
    # The listening socket is closed at once, while the streams are still held upstream.
    wait_until(lambda: refuses_connections(port), "the port to refuse connections")
    assert proc.proc.poll() is None
    assert not any(s.body for s in streams)

    fake.live.bg.call(gate.set)
    for stream in streams:
        body = stream.result()
        assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    assert proc.wait_exit() == 0, proc.log()
    assert fake.state.completed_streams == 6 and fake.state.cancelled_streams == 0


def test_readyz_answers_503_once_draining(proxy: Proxy) -> None:
    assert raw.get(f"{proxy.url}/readyz").status == 200
    proxy.live.bg.call(proxy.app[DRAINING].set)
    answer = raw.get(f"{proxy.url}/readyz")
    assert answer.status == 503 and answer.json()["status"] == "draining"
    assert raw.get(f"{proxy.url}/healthz").status == 200  # alive all the same


def test_stop_hands_a_running_job_back_and_the_next_process_runs_it(
    tmp_path: Path, fake: Fake, redis_url: str, start_proxy: Start
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        {
            "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 5},
            "upstreams": [{"name": "fake", "base_url": fake.url}],
            "redis": {"url": redis_url},
            "cache": {"enabled": False},
        },
    )
    fake.state.latency_ms = 60_000  # the job's upstream call is running when the stop comes
    first = start_proxy("--config", str(config))
    first.wait_ready(port)
    base = f"http://127.0.0.1:{port}/v1/jobs"
    headers = {"Authorization": "Bearer sk-job-owner-0123456789"}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "survive a stop"}]}
    job = raw.post(base, {"endpoint": "/v1/chat/completions", "body": chat}, headers=headers)
    assert job.status == 202
    url = f"{base}/{job.json()['id']}"
    wait_until(lambda: fake.state.in_flight == 1, "the job's upstream call")
    assert raw.get(url, headers=headers).json()["status"] == "in_progress"

    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0, first.log()  # without waiting for the minute-long call
    fake.state.latency_ms = 0
    second = start_proxy("--config", str(config))
    second.wait_ready(port)

    def finished() -> dict[str, object] | None:
        answer = raw.get(url, headers=headers).json()
        return answer if answer["status"] == "completed" else None

    done = wait_until(finished, "the job to complete in the next process")
    assert done["response"]["body"]["choices"][0]["message"]["content"] == "echo: survive a stop"  # type: ignore[index]
