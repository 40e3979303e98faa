"""Load and soak: many connections for a while, Redis restarted in the middle, then a leak check.

Starts a redis-server with AOF (``appendfsync always``, so a restart keeps every accepted job),
the fake upstream and the proxy (``python -m proxy``; cache, coalescing claims and jobs on that
Redis), each as its own process. Then:

1. **warm-up**: the full load for ``--warmup-s`` (pools filled, allocator at its working size),
   clients closed, a short settle; the proxy's RSS and open fds are the *baseline*;
2. **load**: ``--connections`` clients, each on its own kept-alive connection, send a mix of
   plain, streamed, cached (a small set of prompts per tenant), coalesced (identical prompts
   sent together) and micro-batched embeddings requests and job submissions for
   ``--duration-s``; Redis is killed (SIGKILL) at the middle and started again (same port, same
   AOF) ``--redis-down-s`` later; RSS and fds are sampled for the *peak*;
3. **drain**: every accepted job is polled until it is finished (bounded by
   ``--drain-timeout-s``); a job that is gone (404) or unfinished is *lost*;
4. **after**: clients closed, a settle, RSS and fds measured again.

Expectations (``problems()``; the exit status is 1 when one fails):
- no synchronous request fails (any status but 200, a transport error, a stream without
  ``[DONE]`` or with an error event). The only failures the fault dictates are 503s of job
  submissions that overlap the outage: from the kill until the first job accepted after Redis
  is back; they are counted apart, any other 503 is an error;
- every accepted job completes; 0 lost, 0 failed;
- open fds: no client connection left, and every fd that is not a pooled upstream or Redis
  connection (files, pipes, the listening socket, the event loop's) exactly as at baseline;
  pooled connections within their pools' bounds;
- RSS after within ``--rss-slack-mib`` of baseline (allocators keep some of the peak: CPython's
  arenas and glibc's heap are returned only when wholly free).

    python -m bench.soak [--connections 1000] [--duration-s 60] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench._aio import run
from bench._proc import free_port, stop_group, wait_http

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
JOB_DONE = ("completed", "failed", "cancelled", "expired")
#: Pools the proxy keeps to Redis (proxy/app.py, cache, jobs, batches) plus a few pub/sub
#: connections of cross-replica coalescing: an upper bound, not a target.
REDIS_POOL_BOUND = 512 + 256 + 128 + 64 + 16
#: Mix of request kinds, by weight.
DEFAULT_MIX = {
    "plain": 25,
    "stream": 25,
    "cached": 20,
    "coalesced": 10,
    "embeddings": 10,
    "job": 10,
}


@dataclass(frozen=True)
class SoakSettings:
    connections: int = 1000
    duration_s: float = 60.0
    warmup_s: float = 5.0
    redis_down_s: float = 2.0
    settle_s: float = 3.0
    drain_timeout_s: float = 180.0
    request_timeout_s: float = 120.0
    tenants: int = 4
    upstream_latency_ms: float = 20.0
    chunk_delay_ms: float = 2.0
    max_upstream_connections: int = 256
    redis_op_timeout_ms: int = 50  # the product's default bound on each cache operation
    rss_slack_mib: float = 32.0
    seed: int = 1
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    python: str = sys.executable


@dataclass
class Sample:
    """The proxy's RSS and open fds by kind at one moment."""

    rss_kib: int
    fds: dict[str, int]

    @property
    def total_fds(self) -> int:
        return sum(self.fds.values())

    @property
    def fixed_fds(self) -> int:
        """Fds that must come back exactly: everything but client and pooled connections."""
        return self.total_fds - self.fds["client"] - self.fds["upstream"] - self.fds["redis"]


@dataclass
class Report:
    connections: int
    duration_s: float
    requests: int = 0
    ok_by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    dictated: collections.Counter[str] = field(default_factory=collections.Counter)
    cache_hits: int = 0
    coalesced: int = 0
    jobs_submitted: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_lost: int = 0
    drain_s: float = 0.0
    redis_restarted: bool = False
    redis_down_s: float = 0.0
    baseline: Sample | None = None
    peak: Sample | None = None
    after: Sample | None = None
    in_flight_after: float | None = None
    redis_errors: dict[str, int] = field(default_factory=dict)
    #: The proxy's log lines (warnings and errors: the request log is off), counted by message.
    proxy_log: collections.Counter[str] = field(default_factory=collections.Counter)
    proxy_alive: bool = True
    rss_slack_mib: float = 0.0
    max_upstream_connections: int = 0

    def summary(self) -> dict[str, Any]:
        def sample(s: Sample | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"rss_mib": round(s.rss_kib / 1024, 1), "fds": s.total_fds, "by_kind": s.fds}

        return {
            "connections": self.connections,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "ok_by_kind": dict(self.ok_by_kind),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "dictated_by_fault": dict(self.dictated),
            "cache_hits": self.cache_hits,
            "coalesced_replies": self.coalesced,
            "jobs": {
                "submitted": self.jobs_submitted,
                "completed": self.jobs_completed,
                "failed": self.jobs_failed,
                "lost": self.jobs_lost,
                "drain_s": round(self.drain_s, 1),
            },
            "redis_restarted": self.redis_restarted,
            "redis_down_s": round(self.redis_down_s, 2),
            "baseline": sample(self.baseline),
            "peak": sample(self.peak),
            "after": sample(self.after),
            "in_flight_after": self.in_flight_after,
            "proxy_redis_errors": self.redis_errors,
            "proxy_log": dict(self.proxy_log.most_common(10)),
            "problems": problems(self),
        }

    def markdown(self) -> str:
        s = self.summary()
        rows = [
            ("connections", s["connections"]),
            ("duration", f"{s['duration_s']} s, Redis down {s['redis_down_s']} s in the middle"),
            ("requests", s["requests"]),
            ("ok by kind", _kv(s["ok_by_kind"])),
            ("cache hits / coalesced replies", f"{s['cache_hits']} / {s['coalesced_replies']}"),
            ("errors", f"{s['errors']} {_kv(s['errors_by_kind'])}".strip()),
            ("dictated by the fault", _kv(s["dictated_by_fault"]) or "0"),
            (
                "jobs submitted / completed / failed / lost",
                "{submitted} / {completed} / {failed} / {lost} (drained in {drain_s} s)".format(
                    **s["jobs"]
                ),
            ),  # fmt: skip
        ]
        for name in ("baseline", "peak", "after"):
            m = s[name]
            if m is not None:
                rows.append((f"{name}: RSS, fds", f"{m['rss_mib']} MiB, {m['fds']} "
                             f"({_kv(m['by_kind'])})"))  # fmt: skip
        rows.append(("proxy's Redis errors", _kv(s["proxy_redis_errors"]) or "0"))
        rows.append(("proxy's log", _kv(s["proxy_log"]) or "nothing"))
        rows.append(("problems", "; ".join(s["problems"]) or "none"))
        lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        return "\n".join(lines)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))


def problems(report: Report) -> list[str]:
    """Every expectation the run missed (empty: the soak held)."""
    found = []
    if report.errors:
        found.append(f"client errors: {dict(report.errors)}")
    if not report.redis_restarted:
        found.append("Redis was not restarted")
    if report.jobs_lost or report.jobs_failed:
        found.append(f"jobs lost {report.jobs_lost}, failed {report.jobs_failed}")
    if report.jobs_completed != report.jobs_submitted:
        found.append(f"jobs completed {report.jobs_completed} of {report.jobs_submitted}")
    if not report.proxy_alive:
        found.append("the proxy is not answering /healthz")
    if report.in_flight_after not in (None, 0.0):
        found.append(f"{report.in_flight_after} requests still in flight")
    return found + _resource_problems(report)


def _resource_problems(report: Report) -> list[str]:
    found = []
    base, after = report.baseline, report.after
    if base is None or after is None:
        return ["RSS and fds were not measured"]
    if after.fds["client"]:
        found.append(f"{after.fds['client']} client connections still open")
    if after.fixed_fds != base.fixed_fds:
        found.append(f"fds other than pooled connections: {base.fixed_fds} -> {after.fixed_fds}")
    if after.fds["upstream"] > report.max_upstream_connections:
        pool = report.max_upstream_connections
        found.append(f"{after.fds['upstream']} upstream connections (pool: {pool})")
    if after.fds["redis"] > REDIS_POOL_BOUND:
        found.append(f"{after.fds['redis']} Redis connections (pools: {REDIS_POOL_BOUND})")
    grown_mib = (after.rss_kib - base.rss_kib) / 1024
    if grown_mib > report.rss_slack_mib:
        found.append(f"RSS grew {grown_mib:.1f} MiB (slack {report.rss_slack_mib} MiB)")
    return found


# --- processes ---------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    """Raise this process's (and so its children's) soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"RLIMIT_NOFILE is {soft}; {needed} connections need more")


class Redis:
    """A loopback redis-server with AOF, fsync on every write, that may be killed and started
    again on the same port and directory."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is needed on PATH")
        self.exe = exe
        self.port = free_port()
        # tmpfs when there is one: fsync is then free, and a killed process loses nothing.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="llm-proxy-soak-redis-", dir=base)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--maxclients",
                "10000",
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def ping(self) -> bool:
        """PONG (not LOADING) from the server."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc, grace_s=20)


def proxy_config(s: SoakSettings, *, port: int, upstream_port: int, redis_port: int) -> Any:
    """Product defaults, with the cache, coalescing claims and jobs on Redis."""
    return {
        "server": {"host": HOST, "port": port, "access_log": False},
        "upstreams": [
            {
                "name": "fake",
                "base_url": f"http://{HOST}:{upstream_port}/v1",
                "models": ["*"],
                "max_connections": s.max_upstream_connections,
            }
        ],
        "redis": {"url": f"redis://{HOST}:{redis_port}/0", "op_timeout_ms": s.redis_op_timeout_ms},
        "cache": {"backend": "redis"},
        "jobs": {"store": "redis"},
    }


# --- measuring the proxy -----------------------------------------------------------------------


def _tcp_table(pid: int) -> dict[str, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) for the proxy's network namespace."""
    table = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                table[inode] = (int(local.rsplit(":", 1)[1], 16),
                                int(remote.rsplit(":", 1)[1], 16), state)  # fmt: skip
    return table


def measure(pid: int, *, port: int, upstream_port: int, redis_port: int) -> Sample:
    """RSS and fds by kind: client, listen, upstream, redis, other-socket, other."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    table = _tcp_table(pid)
    fds: collections.Counter[str] = collections.Counter(
        client=0, listen=0, upstream=0, redis=0, other_socket=0, other=0
    )
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if not target.startswith("socket:["):
            fds["other"] += 1
            continue
        local, remote, state = table.get(target[8:-1], (0, 0, ""))
        if state == "0A":
            fds["listen"] += 1
        elif remote == upstream_port:
            fds["upstream"] += 1
        elif remote == redis_port:
            fds["redis"] += 1
        elif local == port:
            fds["client"] += 1
        else:
            fds["other_socket"] += 1
    return Sample(rss_kib=rss, fds=dict(fds))


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Outage:
    """When Redis went down and came back (monotonic seconds)."""

    down_at: float | None = None
    up_at: float | None = None
    #: End of the first job submission accepted that started after Redis was back.
    jobs_back_at: float | None = None


@dataclass
class Load:
    url: str
    settings: SoakSettings
    report: Report
    outage: Outage
    job_ids: list[str] = field(default_factory=list)
    #: (start, end) of job submissions answered 503, classified once the outage is over.
    job_503s: list[tuple[float, float]] = field(default_factory=list)
    done: bool = False
    counting: bool = True

    def fail(self, kind: str, why: str) -> None:
        if self.counting:
            self.report.errors[f"{kind}: {why}"] += 1

    def ok(self, kind: str) -> None:
        if self.counting:
            self.report.ok_by_kind[kind] += 1

    async def client(self, session: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(self.settings.seed * 100003 + i)
        kinds = list(self.settings.mix)
        weights = list(self.settings.mix.values())
        key = {"Authorization": f"Bearer sk-soak-tenant-{i % self.settings.tenants}"}
        n = 0
        while not self.done:
            n += 1
            kind = rng.choices(kinds, weights)[0]
            if self.counting:
                self.report.requests += 1
            try:
                await getattr(self, f"_{kind}")(session, key, f"c{i} r{n} {rng.random()}", rng)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.fail(kind, type(exc).__name__)

    async def _chat(
        self, session: aiohttp.ClientSession, key: dict[str, str], kind: str, content: str
    ) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        async with session.post(f"{self.url}/v1/chat/completions", json=body, headers=key) as r:
            raw = await r.read()
            if r.status != 200:
                return self.fail(kind, f"HTTP {r.status}")
            if orjson.loads(raw).get("object") != "chat.completion":
                return self.fail(kind, "bad body")
            if self.counting:
                self.report.cache_hits += r.headers.get("X-Cache") == "HIT"
                self.report.coalesced += "X-Coalesced" in r.headers
        self.ok(kind)

    async def _plain(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        await self._chat(session, key, "plain", unique)

    async def _cached(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        await self._chat(session, key, "cached", f"cached prompt {rng.randrange(32)}")

    async def _coalesced(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        # Everyone sending in the same quarter second asks the same new question.
        await self._chat(session, key, "coalesced", f"together {int(time.time() * 4)}")

    async def _stream(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": f"stream {unique}"}]}  # fmt: skip
        async with session.post(f"{self.url}/v1/chat/completions", json=body, headers=key) as r:
            if r.status != 200:
                await r.read()
                return self.fail("stream", f"HTTP {r.status}")
            last = b""
            async for line in r.content:
                if line.startswith(b'data: {"error"'):
                    return self.fail("stream", "error event")
                if line.strip():
                    last = line.strip()
            if last != b"data: [DONE]":
                return self.fail("stream", "no [DONE]")
        self.ok("stream")

    async def _embeddings(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        body = {"model": "text-embedding-3-small", "input": f"embed {unique}"}
        async with session.post(f"{self.url}/v1/embeddings", json=body, headers=key) as r:
            raw = await r.read()
            if r.status != 200:
                return self.fail("embeddings", f"HTTP {r.status}")
            if len(orjson.loads(raw).get("data", ())) != 1:
                return self.fail("embeddings", "bad body")
        self.ok("embeddings")

    async def _job(self, session: Any, key: dict[str, str], unique: str, rng: Any) -> None:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"job {unique}"}]}
        body = {"endpoint": "/v1/chat/completions", "body": chat}
        start = time.monotonic()
        async with session.post(f"{self.url}/v1/jobs", json=body, headers=key) as r:
            raw = await r.read()
            end = time.monotonic()
            if r.status == 503:
                self.job_503s.append((start, end))
                return None
            if r.status != 202:
                return self.fail("job", f"HTTP {r.status}")
        self.job_ids.append(orjson.loads(raw)["id"])
        self.report.jobs_submitted += 1
        up_at = self.outage.up_at
        if self.outage.jobs_back_at is None and up_at is not None and start > up_at:
            self.outage.jobs_back_at = end
        self.ok("job")

    def classify_503s(self) -> None:
        """A 503 that overlaps the outage (from the kill until jobs were accepted again) is
        dictated by the fault; any other is an error."""
        down, back = self.outage.down_at, self.outage.jobs_back_at
        for start, end in self.job_503s:
            if down is not None and end >= down and (back is None or start < back):
                self.report.dictated["job: HTTP 503 while Redis was down"] += 1
            elif down is None or end < down:
                self.report.errors["job: HTTP 503 before the outage"] += 1
            else:
                assert back is not None
                self.report.errors[
                    f"job: HTTP 503 sent {start - back:+.1f} s after jobs were back"
                ] += 1


async def _sampler(pid: int, where: dict[str, int], report: Report, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sample = measure(pid, **where)
        peak = report.peak
        if peak is None or sample.rss_kib > peak.rss_kib:
            report.peak = Sample(sample.rss_kib, peak.fds if peak else sample.fds)
        if report.peak.total_fds < sample.total_fds:
            report.peak = Sample(report.peak.rss_kib, sample.fds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def _run_clients(load: Load, seconds: float, redis: Redis | None) -> None:
    """``connections`` clients for ``seconds``; with ``redis``, killed at the middle and started
    again ``redis_down_s`` later."""
    s = load.settings
    load.done = False
    async with _session(s.connections, s.request_timeout_s) as session:
        clients = [asyncio.create_task(load.client(session, i)) for i in range(s.connections)]
        try:
            if redis is None:
                await asyncio.sleep(seconds)
            else:
                await asyncio.sleep(seconds / 2)
                load.outage.down_at = time.monotonic()
                redis.kill()
                await asyncio.sleep(s.redis_down_s)
                await asyncio.to_thread(redis.start)
                load.outage.up_at = time.monotonic()
                load.report.redis_restarted = True
                load.report.redis_down_s = load.outage.up_at - load.outage.down_at
                await asyncio.sleep(max(0.0, seconds / 2 - load.report.redis_down_s))
        finally:
            load.done = True
            await asyncio.gather(*clients)


async def _job_status(load: Load, session: aiohttp.ClientSession, job_id: str) -> str:
    """A job's status; "gone" if no tenant knows it, "unavailable" if the proxy cannot say."""
    try:
        # Jobs belong to the tenant that submitted them: ask as each until one knows it.
        for t in range(load.settings.tenants):
            key = {"Authorization": f"Bearer sk-soak-tenant-{t}"}
            async with session.get(f"{load.url}/v1/jobs/{job_id}", headers=key) as r:
                if r.status == 404:
                    continue
                if r.status != 200:
                    return "unavailable"
                return str(orjson.loads(await r.read())["status"])
    except (TimeoutError, aiohttp.ClientError):
        return "unavailable"
    return "gone"


async def _drain(load: Load) -> None:
    """Poll every accepted job until it is finished, or the drain timeout."""
    report = load.report
    start = time.monotonic()
    deadline = start + load.settings.drain_timeout_s
    pending = list(load.job_ids)
    sem = asyncio.Semaphore(32)
    async with _session(32, 30) as session:

        async def one(job_id: str) -> str:
            async with sem:
                return await _job_status(load, session, job_id)

        while pending and time.monotonic() < deadline:
            states = await asyncio.gather(*(one(j) for j in pending))
            still = []
            for job_id, state in zip(pending, states, strict=True):
                if state == "completed":
                    report.jobs_completed += 1
                elif state in JOB_DONE:
                    report.jobs_failed += 1
                elif state == "gone":
                    report.jobs_lost += 1
                else:
                    still.append(job_id)
            pending = still
            if pending:
                await asyncio.sleep(0.5)
    report.jobs_lost += len(pending)  # unfinished at the deadline
    report.drain_s = time.monotonic() - start


async def _read_metrics(url: str, report: Report) -> None:
    """The in-flight request gauge (its /metrics scrape is not counted) and the Redis errors
    the proxy counted, by operation (the outage's, and any timeouts under load)."""
    async with _session(1, 30) as session, session.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("llm_proxy_requests_in_flight"):
            report.in_flight_after = float(line.rsplit(" ", 1)[1])
        elif line.startswith("llm_proxy_redis_errors_total{"):
            labels, value = line.rsplit(" ", 1)
            report.redis_errors[labels[len("llm_proxy_redis_errors_total") :]] = int(float(value))


async def _settle(pid: int, where: dict[str, int], settle_s: float) -> Sample:
    """Wait (bounded) for the client connections to close, then ``settle_s``, then measure."""
    deadline = time.monotonic() + 30
    while measure(pid, **where).fds["client"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle_s)
    return measure(pid, **where)


async def _soak(load: Load, pid: int, where: dict[str, int], redis: Redis) -> None:
    s, report = load.settings, load.report
    load.counting = False
    await _run_clients(load, s.warmup_s, None)
    load.job_ids.clear()
    load.job_503s.clear()
    load.counting = True
    report.jobs_submitted = 0
    report.baseline = await _settle(pid, where, s.settle_s)
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sampler(pid, where, report, stop))
    try:
        await _run_clients(load, s.duration_s, redis)
    finally:
        stop.set()
        await sampler
    load.classify_503s()
    await _drain(load)
    report.after = await _settle(pid, where, s.settle_s)
    await _read_metrics(load.url, report)


Processes = tuple[subprocess.Popen[bytes], Redis, dict[str, int]]


@contextlib.contextmanager
def _processes(s: SoakSettings, tmp: Path) -> Iterator[Processes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        redis = Redis()
        stack.callback(redis.close)
        redis.start()
        up_port, port = free_port(), free_port()
        upstream = subprocess.Popen(
            [
                s.python,
                "-m",
                "bench.fake_upstream",
                "--host",
                HOST,
                "--port",
                str(up_port),
                "--latency-ms",
                str(s.upstream_latency_ms),
                "--chunk-delay-ms",
                str(s.chunk_delay_ms),
            ],  # fmt: skip
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(_stop, upstream)
        wait_http(f"http://{HOST}:{up_port}/v1/models", upstream)
        config = tmp / "proxy.yaml"
        doc = proxy_config(s, port=port, upstream_port=up_port, redis_port=redis.port)
        config.write_text(yaml.safe_dump(doc))
        log = (tmp / "proxy.log").open("wb")
        stack.callback(log.close)
        proxy = subprocess.Popen(
            [s.python, "-m", "proxy", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(_stop, proxy)
        wait_http(f"http://{HOST}:{port}/healthz", proxy)
        yield proxy, redis, {"port": port, "upstream_port": up_port, "redis_port": redis.port}


def _log_messages(path: Path) -> Iterator[str]:
    """Each log line's message, numbers blanked so that repeats count together."""
    for line in path.read_text(errors="replace").splitlines():
        try:
            message = str(json.loads(line).get("message", line))
        except (ValueError, AttributeError):
            message = line
        yield re.sub(r"\d+(\.\d+)?", "N", message)[:160]


def run_soak(settings: SoakSettings) -> Report:
    """One soak run (see the module docstring); ``problems(report)`` says what it missed."""
    # Each client connection costs an fd here and one in the proxy, plus pools and files.
    raise_fd_limit(settings.connections * 2 + 2048)
    report = Report(connections=settings.connections, duration_s=settings.duration_s,
                    rss_slack_mib=settings.rss_slack_mib,
                    max_upstream_connections=settings.max_upstream_connections)  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="llm-proxy-soak-") as tmp,
        _processes(settings, Path(tmp)) as (proxy, redis, where),
    ):
        url = f"http://{HOST}:{where['port']}"
        load = Load(url=url, settings=settings, report=report, outage=Outage())
        run(_soak(load, proxy.pid, where, redis))
        report.proxy_log.update(_log_messages(Path(tmp) / "proxy.log"))
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
                report.proxy_alive = response.status == 200
        except OSError:
            report.proxy_alive = False
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    defaults = SoakSettings()
    for name, value in asdict(defaults).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            add(f"--{name.replace('_', '-')}", type=type(value), default=value)
    add("--python", default=sys.executable)
    add("--json", action="store_true", help="print the summary as JSON (default: markdown)")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    report = run_soak(SoakSettings(**args))
    print(json.dumps(report.summary(), indent=2) if as_json else report.markdown())
    raise SystemExit(1 if problems(report) else 0)


if __name__ == "__main__":
    main()
