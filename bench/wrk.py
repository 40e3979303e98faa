"""Throughput where the load and the upstream cost next to nothing: nginx + wrk.

On a 2-core machine a Python load generator and a Python fake upstream measure themselves, so this
harness puts nginx (one worker, ``return 200`` with a fixed chat completion) behind the proxy and
drives it with ``wrk`` (a Lua script that sends a distinct body per request, so nothing coalesces
or hits the cache). Every variant is measured in the same run, alternating for a few rounds, and
reported as a ratio against a baseline variant of the same run:

    python -m bench.wrk --variant direct --variant bare --variant proxy --rounds 3
    python -m bench.wrk --variant proxy --variant proxy-w2 --baseline proxy
    python -m bench.wrk --variant proxy-quiet --variant proxy --baseline proxy-quiet

A variant is a name from ``VARIANTS``; ``--python`` picks the interpreter of the proxy processes
(e.g. a 3.13 venv), so two interpreters can be compared in one run with ``--variant
proxy@/path/to/python``. Needs ``nginx`` and ``wrk`` on PATH (Debian: nginx-light, wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench._proc import free_port, group_cpu_s, stop_group, wait_http

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from nginx."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    },
    separators=(",", ":"),
)

LUA = r"""
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  counter = 0
end
function request()
  counter = counter + 1
  local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"distinct '
    .. tid .. '-' .. counter .. '"}]}'
  return wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench-wrk"}, body)
end
"""


@dataclass(frozen=True)
class Variant:
    """One thing measured: nginx itself, the bare forwarder, or the proxy with a config."""

    kind: str  # "direct", "bare" or "proxy"
    description: str
    config: Mapping[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()


# The proxy's default config, pass-through: coalescing and batching on (defaults), cache off.
_PASS = {"cache": {"enabled": False}}
_LOG_TO_FILE = {"server": {"access_log": True, "log_format": "json"}}
_QUIET = {"server": {"access_log": False, "request_metrics": False}}
# More than one worker needs jobs on Redis or off; the 1-worker yardstick gets the same config.
_NO_STATE = {"jobs": {"enabled": False}, "batches": {"mode": "passthrough"}}

VARIANTS: dict[str, Variant] = {
    "direct": Variant("direct", "wrk straight to nginx"),
    "bare": Variant("bare", "the 30-line aiohttp forwarder (bench/bare_forwarder.py)"),
    "proxy": Variant("proxy", "proxy, 1 worker, defaults, cache off", config=_PASS),
    "proxy-log": Variant(
        "proxy",
        "proxy, 1 worker, cache off, JSON request log to a file, metrics on",
        config={**_PASS, **_LOG_TO_FILE},
    ),
    "proxy-quiet": Variant(
        "proxy",
        "proxy, 1 worker, cache off, request log and metrics off",
        config={**_PASS, **_QUIET},
    ),
    "proxy-metrics-only": Variant(
        "proxy",
        "proxy, 1 worker, cache off, metrics on, request log off",
        config={**_PASS, "server": {"access_log": False}},
    ),
    "proxy-log-only": Variant(
        "proxy",
        "proxy, 1 worker, cache off, JSON request log to a file, metrics off",
        config={
            **_PASS,
            "server": {"access_log": True, "log_format": "json", "request_metrics": False},
        },
    ),
    "proxy-w1": Variant(
        "proxy",
        "proxy, 1 worker, defaults, cache off, jobs off",
        config={**_PASS, **_NO_STATE},
        args=("--workers", "1"),
    ),
    "proxy-w2": Variant(
        "proxy",
        "proxy, 2 workers, defaults, cache off",
        # Jobs and emulated batches keep their state in Redis with workers (none here).
        config={**_PASS, "jobs": {"enabled": False}, "batches": {"mode": "passthrough"}},
        args=("--workers", "2"),
    ),
}


@contextlib.contextmanager
def _child(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            stop_group(proc)


@contextlib.contextmanager
def nginx(workdir: Path) -> Iterator[int]:
    """nginx answering every request with a fixed chat completion, one worker process."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    body = CHAT_BODY.replace("\\", "\\\\").replace("'", "\\'")
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  keepalive_requests 1000000;
  server {{
    listen {HOST}:{port} reuseport backlog=4096;
    location / {{
      default_type application/json;
      client_body_buffer_size 64k;
      return 200 '{body}';
    }}
  }}
}}
"""
    )
    with _child([exe, "-e", str(workdir / "nginx-error.log"), "-p", str(workdir), "-c", str(conf)],
                workdir / "nginx.log") as proc:  # fmt: skip
        wait_http(f"http://{HOST}:{port}/healthz", proc, log=workdir / "nginx.log")
        yield port


@contextlib.contextmanager
def target(
    name: str, variant: Variant, nginx_port: int, workdir: Path, python: str
) -> Iterator[tuple[str, int | None]]:
    """Start what `variant` measures; yield the base URL that wrk sends to and the process group
    of what serves it (``None``: nginx itself)."""
    if variant.kind == "direct":
        yield f"http://{HOST}:{nginx_port}", None
        return
    port = free_port()
    config: dict[str, Any] = {
        "server": {"host": HOST, "port": port},
        "upstreams": [{"name": "nginx", "base_url": f"http://{HOST}:{nginx_port}/v1"}],
    }
    for section, values in variant.config.items():
        config[section] = {**config.get(section, {}), **values}
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    config_path = workdir / f"{safe}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    module = "bench.bare_forwarder" if variant.kind == "bare" else "proxy"
    argv = [python, "-m", module, "--config", str(config_path), "--host", HOST, "--port", str(port)]
    argv += variant.args
    log = workdir / f"{safe}.log"
    with _child(argv, log) as proc:
        wait_http(f"http://{HOST}:{port}/healthz", proc, log=log)
        yield f"http://{HOST}:{port}", proc.pid


def run_wrk(
    url: str, *, duration_s: int, connections: int, threads: int, script: Path
) -> tuple[float, int]:
    """Requests per second that wrk measured, and the requests; non-2xx answers or socket errors
    fail the run."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    done = re.search(r"([0-9]+) requests in", out)
    if match is None or done is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    return float(match.group(1)), int(done.group(1))


def _parse_variant(spec: str) -> tuple[str, Variant, str | None]:
    name, _, python = spec.partition("@")
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return spec, VARIANTS[name], python or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="name[@python]")
    parser.add_argument("--baseline", help="variant the others are divided by (default: first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--python", default=sys.executable, help="interpreter for the proxy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    specs = [_parse_variant(s) for s in args.variant]
    baseline = args.baseline or specs[0][0]
    results: dict[str, list[float]] = {name: [] for name, _, _ in specs}
    #: CPU microseconds per request of what serves the variant (all its processes).
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in specs}
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        script = workdir / "distinct.lua"
        script.write_text(LUA)
        nginx_port = stack.enter_context(nginx(workdir))
        for rnd in range(args.rounds):
            for name, variant, python in specs:
                python_ = python or args.python
                with target(name, variant, nginx_port, workdir, python_) as (url, pgid):
                    if args.warmup:
                        run_wrk(url, duration_s=args.warmup, connections=args.connections,
                                threads=args.threads, script=script)  # fmt: skip
                    before = group_cpu_s(pgid) if pgid is not None else 0.0
                    rps, done = run_wrk(url, duration_s=args.duration,
                                        connections=args.connections, threads=args.threads,
                                        script=script)  # fmt: skip
                    if pgid is not None:
                        cpu[name].append((group_cpu_s(pgid) - before) / done * 1e6)
                results[name].append(rps)
                used = f", {cpu[name][-1]:.1f} us CPU/request" if cpu[name] else ""
                line = f"round {rnd + 1} {name}: {rps:,.0f} req/s{used}"
                print(line, file=sys.stderr, flush=True)
    base = statistics.median(results[baseline])
    rows = [
        {
            "variant": name,
            "description": VARIANTS[name.partition("@")[0]].description,
            "rps_median": statistics.median(values),
            "rps_runs": values,
            "ratio": statistics.median(values) / base,
            "cpu_us_per_request": statistics.median(cpu[name]) if cpu[name] else None,
        }
        for name, values in results.items()
    ]
    if args.json:
        print(json.dumps({"baseline": baseline, "rows": rows}, indent=2))
        return 0
    print(f"| variant | what | req/s (median of {args.rounds}) | × {baseline} | CPU µs/request |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        per_request: Any = row["cpu_us_per_request"]
        print(
            f"| {row['variant']} | {row['description']} | {row['rps_median']:,.0f} "
            f"| {row['ratio']:.2f} | {'' if per_request is None else f'{per_request:.1f}'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
