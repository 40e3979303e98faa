"""Run a benchmark scenario directly against the fake upstream and through the proxy.

Starts the fake upstream and the proxy as subprocesses pinned to one core, runs the load
generator pinned to another, alternating direct and proxied runs for a few rounds, and prints the
medians side by side:

    python -m bench.run --scenario passthrough-latency [--scenario ...] [--rounds 3] [--json]

Add a scenario by adding an entry to `SCENARIOS`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Metric:
    """One table row: a key of the loadgen report and how proxy compares with direct."""

    key: str
    label: str
    compare: Literal["ratio", "added"]  # proxy / direct, or proxy - direct (in ms)


P50 = Metric("p50_ms", "latency p50 (ms)", "added")
P90 = Metric("p90_ms", "latency p90 (ms)", "added")
P99 = Metric("p99_ms", "latency p99 (ms)", "added")
RPS = Metric("rps", "throughput (req/s)", "ratio")
TTFB_P50 = Metric("ttfb_p50_ms", "TTFB p50 (ms)", "added")
TTFB_P99 = Metric("ttfb_p99_ms", "TTFB p99 (ms)", "added")
GAP_P50 = Metric("gap_p50_ms", "inter-chunk gap p50 (ms)", "added")
UPSTREAM = Metric("upstream_calls_per_request", "upstream calls / request", "ratio")
UPSTREAM_CALLS = Metric("upstream_calls", "upstream calls (all requests)", "ratio")
WALL = Metric("elapsed_s", "wall time for all requests (s)", "ratio")


@dataclass(frozen=True)
class Scenario:
    """Load shape, fake-upstream flags and proxy config for one benchmark."""

    description: str
    load: str  # a bench.loadgen scenario
    concurrency: int
    count: int
    metrics: tuple[Metric, ...]
    warmup: int = 200
    repeat: bool = False
    distinct: int | None = None
    inputs: int = 1
    upstream_args: tuple[str, ...] = ()
    proxy_config: Mapping[str, Any] = field(default_factory=dict)  # merged into the base config
    #: Start a redis-server (free port, no persistence) and export its URL as
    #: $LLM_PROXY_BENCH_JOBS_REDIS_URL for the proxy config.
    redis: bool = False


_CACHE_MEMORY: Mapping[str, Any] = {"cache": {"enabled": True, "backend": "memory"}}
_CACHE_REDIS: Mapping[str, Any] = {
    "cache": {"enabled": True, "backend": "redis"},
    "redis": {"url": "${LLM_PROXY_BENCH_JOBS_REDIS_URL}"},  # the scenario starts a redis-server
}

# Observability (issue 9): on as shipped (JSON forced: the log goes to a file either way), off.
_OBSERVE_ON: Mapping[str, Any] = {
    "server": {"access_log": True, "log_format": "json", "request_metrics": True}
}
_OBSERVE_OFF: Mapping[str, Any] = {"server": {"access_log": False, "request_metrics": False}}

# Jobs (issue 5): driven by bench.jobs_load, which speaks the loadgen command line.
_JOBS_DRIVERS = {"job-submit": "bench.jobs_load", "job-drain": "bench.jobs_load"}
_JOBS_REDIS: Mapping[str, Any] = {
    "redis": {"url": "${LLM_PROXY_BENCH_JOBS_REDIS_URL}"},
    "jobs": {"store": "redis", "concurrency": 64, "poll_interval_s": 0.05},
}
WALL = Metric("elapsed_s", "wall time (s)", "ratio")
# The Batch API (issue 10): driven by bench.batch_load.
_JOBS_DRIVERS["batch-embeddings"] = "bench.batch_load"
DRAIN_RATIO = Metric("drain_ratio", "jobs / sync via proxy, wall time", "ratio")

SCENARIOS: dict[str, Scenario] = {
    "job-submit-latency": Scenario(
        "POST /v1/jobs one at a time, Redis on loopback (direct: a synchronous chat request)",
        load="job-submit",
        concurrency=1,
        count=2000,
        metrics=(P50, P90, P99),
        proxy_config=_JOBS_REDIS,
        redis=True,
    ),
    "job-drain": Scenario(
        "5,000 jobs drained vs 5,000 synchronous chat requests, 64 concurrent, zero latency",
        load="job-drain",
        concurrency=64,
        count=5000,
        warmup=200,
        metrics=(WALL, DRAIN_RATIO),
        proxy_config=_JOBS_REDIS,
        redis=True,
    ),
    "batch-embeddings": Scenario(
        "10,000 embeddings: one batch via the proxy vs one request per call (direct), "
        "upstream 20 ms + 0.2 ms/input, 4 calls at once",
        load="batch-embeddings",
        concurrency=4,
        count=10_000,
        warmup=0,
        upstream_args=("--latency-ms", "20", "--per-input-ms", "0.2", "--max-concurrency", "4"),
        metrics=(WALL, UPSTREAM_CALLS),
        proxy_config={"batches": {"poll_interval_s": 0.05}},
    ),
    "passthrough-latency": Scenario(
        "chat, non-stream, one request at a time: latency the proxy adds",
        load="chat",
        concurrency=1,
        count=2000,
        metrics=(P50, P90, P99, UPSTREAM),
    ),
    "passthrough-throughput": Scenario(
        "chat, non-stream, 64 concurrent: throughput through the proxy",
        load="chat",
        concurrency=64,
        count=20000,
        metrics=(RPS, P50, P99, UPSTREAM),
    ),
    # Observability (issue 9): the request log (JSON, to the proxy's log file) and the
    # per-request metrics, against both off. Run the pair together; compare their RPS.
    "passthrough-observe-on": Scenario(
        "chat, non-stream, 64 concurrent: request log (JSON to a file) and metrics on",
        load="chat",
        concurrency=64,
        count=20000,
        metrics=(RPS, P50, P99, UPSTREAM),
        proxy_config=_OBSERVE_ON,
    ),
    "passthrough-observe-off": Scenario(
        "chat, non-stream, 64 concurrent: request log and per-request metrics off",
        load="chat",
        concurrency=64,
        count=20000,
        metrics=(RPS, P50, P99, UPSTREAM),
        proxy_config=_OBSERVE_OFF,
    ),
    # Coalescing (issue 4).
    "dedup-burst": Scenario(
        "100 concurrent identical chat requests, upstream 200 ms: single flight",
        load="chat",
        concurrency=100,
        count=100,
        warmup=0,
        repeat=True,
        upstream_args=("--latency-ms", "200"),
        metrics=(UPSTREAM_CALLS, UPSTREAM, P50),
    ),
    "dedup-burst-stream": Scenario(
        "100 concurrent identical streamed chat requests, upstream 200 ms: single flight",
        load="stream",
        concurrency=100,
        count=100,
        warmup=0,
        repeat=True,
        upstream_args=("--latency-ms", "200", "--chunk-delay-ms", "2"),
        metrics=(UPSTREAM_CALLS, UPSTREAM, P50),
    ),
    "embeddings-burst": Scenario(
        "2,000 concurrent single-input embeddings; upstream 20 ms + 0.2 ms/input, 4 at once",
        load="embeddings",
        concurrency=2000,
        count=2000,
        warmup=0,
        upstream_args=("--latency-ms", "20", "--per-input-ms", "0.2", "--max-concurrency", "4"),
        metrics=(WALL, UPSTREAM_CALLS, UPSTREAM, P50, P99),
    ),
    "batching-low-load": Scenario(
        "embeddings one at a time, batching on with max_wait_ms 5",
        load="embeddings",
        concurrency=1,
        count=1000,
        metrics=(P50, P90, UPSTREAM),
        proxy_config={"batching": {"embeddings": {"max_wait_ms": 5}}},
    ),
    "batching-low-load-0": Scenario(
        "embeddings one at a time, batching on with max_wait_ms 0",
        load="embeddings",
        concurrency=1,
        count=1000,
        metrics=(P50, P90, UPSTREAM),
        proxy_config={"batching": {"embeddings": {"max_wait_ms": 0}}},
    ),
    "batching-low-load-off": Scenario(
        "embeddings one at a time, batching off (pass-through baseline)",
        load="embeddings",
        concurrency=1,
        count=1000,
        metrics=(P50, P90, UPSTREAM),
        proxy_config={"batching": {"enabled": False}},
    ),
    "stream-ttfb": Scenario(
        "chat stream, one at a time, upstream chunks 5 ms apart: TTFB and chunk pacing",
        load="stream",
        concurrency=1,
        count=200,
        warmup=20,
        upstream_args=("--chunk-delay-ms", "5"),
        metrics=(TTFB_P50, TTFB_P99, GAP_P50, P50, UPSTREAM),
    ),
    # Response cache (issue 3): the same request repeated, so every measured request is a hit
    # (the warmup stores it). Run with passthrough-throughput to compare hits with pass-through.
    "cache-hit-latency": Scenario(
        "chat, non-stream, one at a time, repeated: a memory-cache hit",
        load="chat",
        concurrency=1,
        count=2000,
        repeat=True,
        metrics=(P50, P90, P99, UPSTREAM),
        proxy_config=_CACHE_MEMORY,
    ),
    "cache-hit-redis-latency": Scenario(
        "chat, non-stream, one at a time, repeated: a Redis-cache hit (Redis on loopback)",
        load="chat",
        concurrency=1,
        count=2000,
        repeat=True,
        metrics=(P50, P90, P99, UPSTREAM),
        proxy_config=_CACHE_REDIS,
        redis=True,
    ),
    "responses-cache-hit-latency": Scenario(
        "Responses API (POST /v1/responses), one at a time, repeated: a memory-cache hit",
        load="responses",
        concurrency=1,
        count=2000,
        repeat=True,
        metrics=(P50, P90, P99, UPSTREAM),
        proxy_config=_CACHE_MEMORY,
    ),
    "responses-cache-hit-redis-latency": Scenario(
        "Responses API, one at a time, repeated: a Redis-cache hit (Redis on loopback)",
        load="responses",
        concurrency=1,
        count=2000,
        repeat=True,
        metrics=(P50, P90, P99, UPSTREAM),
        proxy_config=_CACHE_REDIS,
        redis=True,
    ),
    "cache-hit-throughput": Scenario(
        "chat, non-stream, 64 concurrent, repeated: memory-cache hits vs a zero-latency upstream",
        load="chat",
        concurrency=64,
        count=20000,
        repeat=True,
        metrics=(RPS, P50, P99, UPSTREAM),
        proxy_config=_CACHE_MEMORY,
    ),
    "cache-hit-slow-upstream": Scenario(
        "chat, non-stream, 64 concurrent, repeated, upstream 200 ms: hits vs direct",
        load="chat",
        concurrency=64,
        count=3000,
        repeat=True,
        upstream_args=("--latency-ms", "200"),
        metrics=(RPS, P50, P99, UPSTREAM),
        proxy_config=_CACHE_MEMORY,
    ),
}


@dataclass(frozen=True)
class Options:
    rounds: int
    python: str
    pin: bool
    cpu_upstream: int
    cpu_proxy: int
    cpu_loadgen: int
    direct_only: bool
    headers: tuple[str, ...]
    proxy_module: str
    proxy_args: tuple[str, ...]
    proxy_config_extra: Mapping[str, Any]
    #: Also measure the bare forwarder (bench.bare_forwarder) in the same rounds.
    bare: bool
    startup_timeout_s: float
    run_timeout_s: float
    log_dir: Path


# --- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pinned(cpu: int, argv: list[str], opts: Options) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if opts.pin else argv


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the child leads its own session (start_new_session)
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _child(name: str, argv: list[str], opts: Options) -> Iterator[subprocess.Popen[bytes]]:
    log_path = opts.log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop(proc)


def _wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], opts: Options) -> None:
    """Poll `url` until it answers 200; fail early if the process dies."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy env
    deadline = time.monotonic() + opts.startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}:\n{_tail(opts.log_dir / f'{name}.log')}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):  # not up yet
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not ready at {url} after {opts.startup_timeout_s}s")


def _http_json(method: str, url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=5) as response:
        return json.loads(response.read())


# --- config ------------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `extra` wins, lists are replaced, not concatenated."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def proxy_config(
    *, upstream_port: int, scenario: Scenario, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The proxy's YAML config: one upstream (the fake), cache off, then the overrides."""
    base = {
        "upstreams": [
            {"name": "fake", "base_url": f"http://{HOST}:{upstream_port}/v1", "models": ["*"]}
        ],
        "routing": {"default_upstream": "fake"},
        "cache": {"enabled": False},
    }
    return _merge(_merge(base, scenario.proxy_config), extra)


# --- running -----------------------------------------------------------------------------------


def _loadgen(base_url: str, scenario: Scenario, reset_url: str, opts: Options) -> dict[str, Any]:
    argv = [
        opts.python,
        "-m",
        _JOBS_DRIVERS.get(scenario.load, "bench.loadgen"),
        "--url",
        base_url,
        "--scenario",
        scenario.load,
        "--concurrency",
        str(scenario.concurrency),
        "--count",
        str(scenario.count),
        "--warmup",
        str(scenario.warmup),
        "--inputs",
        str(scenario.inputs),
        "--after-warmup",
        reset_url,
        "--json",
    ]
    if scenario.repeat:
        argv.append("--repeat")
    if scenario.distinct:
        argv += ["--distinct", str(scenario.distinct)]
    for header in opts.headers:
        argv += ["--header", header]
    done = subprocess.run(
        _pinned(opts.cpu_loadgen, argv, opts),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=opts.run_timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def _one_run(
    target: str, base_url: str, scenario: Scenario, fake: str, opts: Options
) -> dict[str, Any]:
    report = _loadgen(base_url, scenario, f"{fake}/_fake/reset", opts)
    calls = sum(_http_json("GET", f"{fake}/_fake/stats")["calls"].values())
    report["upstream_calls"] = calls
    report["upstream_calls_per_request"] = round(calls / report["ok"], 4) if report["ok"] else None
    report["target"] = target
    return report


def _median(reports: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in reports if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def _rows(scenario: Scenario, runs: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for metric in scenario.metrics:
        direct = _median(runs["direct"], metric.key)
        proxied = _median(runs.get("proxy", []), metric.key)
        row: dict[str, Any] = {"metric": metric.key, "label": metric.label}
        row.update(direct=direct, proxy=proxied, compare=metric.compare, delta=None)
        if "bare" in runs:
            row["bare"] = _median(runs["bare"], metric.key)
        if direct is not None and proxied is not None:
            if metric.compare == "added":
                row["delta"] = round(proxied - direct, 3)
            elif direct:
                row["delta"] = round(proxied / direct, 3)
        rows.append(row)
    return rows


def run_scenario(name: str, scenario: Scenario, opts: Options) -> dict[str, Any]:
    """Start fake (+ proxy), alternate direct/proxied loadgen runs, return medians and raw runs."""
    upstream_port = _free_port()
    fake = f"http://{HOST}:{upstream_port}"
    runs: dict[str, list[dict[str, Any]]] = {"direct": []}
    with contextlib.ExitStack() as stack:
        fake_argv = [opts.python, "-m", "bench.fake_upstream", "--port", str(upstream_port)]
        fake_argv += scenario.upstream_args
        fake_proc = stack.enter_context(
            _child("fake_upstream", _pinned(opts.cpu_upstream, fake_argv, opts), opts)
        )
        _wait_ready("fake_upstream", f"{fake}/v1/models", fake_proc, opts)
        if scenario.redis:
            _start_redis(stack, opts)
        targets = {"direct": f"{fake}/v1"}
        if not opts.direct_only:
            targets["proxy"] = _start_proxy(stack, upstream_port, scenario, opts)
            runs["proxy"] = []
            if opts.bare:
                targets["bare"] = _start_proxy(
                    stack, upstream_port, scenario, opts, name="bare", module="bench.bare_forwarder"
                )
                runs["bare"] = []
        for round_ in range(opts.rounds):
            # Alternate the order so slow drift (thermal, caches) does not favour one side.
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for target in order:
                report = _one_run(target, targets[target], scenario, fake, opts)
                runs[target].append(report)
                print(f"  [{name} round {round_ + 1}] {target}: {_brief(report)}", file=sys.stderr)
    return {
        "scenario": name,
        "description": scenario.description,
        "load": scenario.load,
        "concurrency": scenario.concurrency,
        "count": scenario.count,
        "rounds": opts.rounds,
        "rows": _rows(scenario, runs),
        "errors": {t: _sum_errors(rs) for t, rs in runs.items()},
        "runs": runs,
    }


def _start_redis(stack: contextlib.ExitStack, opts: Options) -> None:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH")
    port = _free_port()
    argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(opts.log_dir)]
    stack.enter_context(_child("redis", _pinned(opts.cpu_upstream, argv, opts), opts))
    deadline = time.monotonic() + opts.startup_timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    os.environ["LLM_PROXY_BENCH_JOBS_REDIS_URL"] = f"redis://{HOST}:{port}/0"


def _start_proxy(
    stack: contextlib.ExitStack,
    upstream_port: int,
    scenario: Scenario,
    opts: Options,
    *,
    name: str = "proxy",
    module: str | None = None,
) -> str:
    port = _free_port()
    config = proxy_config(
        upstream_port=upstream_port, scenario=scenario, extra=opts.proxy_config_extra
    )
    config_path = opts.log_dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [opts.python, "-m", module or opts.proxy_module, "--config", str(config_path)]
    argv += ["--host", HOST, "--port", str(port)]
    if module is None:
        argv += opts.proxy_args
    proc = stack.enter_context(_child(name, _pinned(opts.cpu_proxy, argv, opts), opts))
    _wait_ready(name, f"http://{HOST}:{port}/healthz", proc, opts)
    return f"http://{HOST}:{port}/v1"


def _sum_errors(reports: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for reason, n in report["errors"].items():
            total[reason] = total.get(reason, 0) + n
    return total


def _brief(report: dict[str, Any]) -> str:
    keys = ("rps", "p50_ms", "p99_ms", "ttfb_p50_ms", "gap_p50_ms")
    parts = [f"{k}={report[k]}" for k in keys if report.get(k) is not None]
    return " ".join(parts) + (f" errors={report['errors']}" if report["errors"] else "")


# --- output ------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.3g}" if value else "0"


def _fmt_delta(row: Mapping[str, Any]) -> str:
    delta = row["delta"]
    if delta is None:
        return "-"
    return f"{delta:.2f}x" if row["compare"] == "ratio" else f"{delta:+.3f} ms"


def _vs_bare(row: Mapping[str, Any]) -> str:
    bare, proxied = row.get("bare"), row["proxy"]
    if bare is None or proxied is None:
        return "-"
    if row["compare"] == "ratio":
        return f"{proxied / bare:.2f}x" if bare else "-"
    return f"{proxied - bare:+.3f} ms"


def markdown(result: Mapping[str, Any]) -> str:
    """A markdown table for one `run_scenario` result."""
    lines = [
        f"### {result['scenario']}: {result['description']}",
        f"{result['load']}, concurrency {result['concurrency']}, {result['count']} requests, "
        f"median of {result['rounds']} rounds",
        "",
    ]
    bare = any("bare" in row for row in result["rows"])
    if bare:
        lines += [
            "| metric | direct | proxy | ratio / added | bare forwarder | proxy vs bare |",
            "|---|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += ["| metric | direct | proxy | ratio / added |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        cells = [row["label"], _fmt(row["direct"]), _fmt(row["proxy"]), _fmt_delta(row)]
        line = "| " + " | ".join(cells) + " |"
        if bare:
            line += f" {_fmt(row.get('bare'))} | {_vs_bare(row)} |"
        lines.append(line)
    errors = {t: e for t, e in result["errors"].items() if e}
    if errors:
        lines += ["", f"**errors**: {errors}"]
    return "\n".join(lines)


def _can_pin(cpus: set[int]) -> bool:
    return shutil.which("taskset") is not None and cpus <= os.sched_getaffinity(0)


def _options(args: argparse.Namespace, log_dir: Path) -> Options:
    extra: Mapping[str, Any] = {}
    if args.proxy_config_extra:
        extra = yaml.safe_load(Path(args.proxy_config_extra).read_text()) or {}
    cpus = {args.cpu_upstream, args.cpu_proxy, args.cpu_loadgen}
    pin = not args.no_pin and _can_pin(cpus)
    if not args.no_pin and not pin:
        print(f"warning: cannot pin to cpus {sorted(cpus)}; running unpinned", file=sys.stderr)
    return Options(
        rounds=args.rounds,
        python=args.python,
        pin=pin,
        cpu_upstream=args.cpu_upstream,
        cpu_proxy=args.cpu_proxy,
        cpu_loadgen=args.cpu_loadgen,
        direct_only=args.direct_only,
        headers=tuple(args.header),
        proxy_module=args.proxy_module,
        proxy_args=tuple(args.proxy_arg),
        proxy_config_extra=extra,
        bare=args.bare,
        startup_timeout_s=args.startup_timeout_s,
        run_timeout_s=args.run_timeout_s,
        log_dir=log_dir,
    )


def _scenario(name: str, args: argparse.Namespace) -> Scenario:
    overrides = {
        key: getattr(args, key)
        for key in ("concurrency", "count", "warmup")
        if getattr(args, key) is not None
    }
    return replace(SCENARIOS[name], **overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--scenario", action="append", required=True, choices=sorted(SCENARIOS))
    add("--rounds", type=int, default=3)
    add("--concurrency", type=int, help="override the scenario's concurrency")
    add("--count", type=int, help="override the scenario's request count")
    add("--warmup", type=int, help="override the scenario's warmup count")
    add("--proxy-config-extra", metavar="FILE", help="YAML merged into the proxy config")
    add("--proxy-module", default="proxy", help="run the proxy as `python -m MODULE`")
    add("--proxy-arg", action="append", default=[], help="extra argument for `python -m proxy`")
    add("--header", action="append", default=[], metavar="K:V", help="passed to the loadgen")
    add("--direct-only", action="store_true", help="skip the proxy (check the harness itself)")
    add(
        "--bare",
        action="store_true",
        help="also run bench.bare_forwarder in the same rounds (the yardstick for the core)",
    )
    add("--no-pin", action="store_true", help="do not use taskset")
    add("--cpu-upstream", type=int, default=1)
    add("--cpu-proxy", type=int, default=1)
    add("--cpu-loadgen", type=int, default=0)
    add("--python", default=sys.executable)
    add("--startup-timeout-s", type=float, default=30.0)
    add("--run-timeout-s", type=float, default=600.0)
    add("--keep-logs", action="store_true", help="keep the temp dir with logs and proxy.yaml")
    add("--json", action="store_true", help="print JSON instead of markdown")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="llm-proxy-bench-"))
    results: list[dict[str, Any]] = []
    status = 0
    try:
        opts = _options(args, log_dir)
        for name in args.scenario:
            results.append(run_scenario(name, _scenario(name, args), opts))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}\n(logs in {log_dir})", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:  # children are already stopped by the context managers
        print(f"interrupted (logs in {log_dir})", file=sys.stderr)
        status = 130
    if status == 0 and not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    # Whatever finished is still worth printing when a later scenario fails.
    if args.json:
        print(json.dumps({"results": results, "ok": status == 0}, indent=2))
    elif results:
        print("\n\n".join(markdown(result) for result in results))
    sys.exit(status)


if __name__ == "__main__":
    main()
