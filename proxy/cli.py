"""Command line: ``llm-proxy [--version] [--config PATH] [--host H] [--port P] [--workers N]``
and ``llm-proxy check-config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from aiohttp import web

from . import __version__, supervisor
from .auth import is_loopback
from .config import ConfigError, Settings, load_config, masked_dump
from .metrics import Metrics
from .observe.logs import configure_logging
from .resources import Shared
from .runtime import Runtime
from .supervisor import METRICS_DIR_ENV, STOP_SIGNALS

try:
    import uvloop
except ImportError:  # not built for Windows: the standard loop is slower but works
    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = None
else:
    _LOOP_FACTORY = uvloop.new_event_loop

__all__ = ["ListenError", "main", "serve", "use_eager_tasks"]

log = logging.getLogger("proxy")


class ListenError(Exception):
    """The listening socket could not be opened (port in use, address not local)."""


def use_eager_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.12+: a new task runs at once until it first waits, instead of being scheduled
    through the loop. A task that never waits (a cache hit, a flight that a follower joins
    when done) costs a fraction; nothing changes for the others. Python 3.11: no-op."""
    if sys.version_info >= (3, 12):
        loop.set_task_factory(_eager_task)


if sys.version_info >= (3, 12):

    def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        # Not asyncio.eager_task_factory: uvloop passes eager_start=False to the factory itself.
        kwargs["eager_start"] = True
        return asyncio.Task(coro, loop=loop, **kwargs)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    idle_timeout_s: float = 75.0,
    reuse_port: bool = False,
    draining: asyncio.Event | None = None,
    on_reload: Callable[[], None] | None = None,
) -> None:
    """Run ``app`` until SIGINT/SIGTERM; a client that goes away cancels its handler.

    On SIGINT/SIGTERM: ``draining`` is set (``/readyz`` answers 503), the listening socket
    closes at once, requests and streams in flight get ``shutdown_timeout_s`` to finish, then
    the app's cleanup runs (running jobs go back to the queue). SIGHUP calls ``on_reload``.
    """
    loop = asyncio.get_running_loop()
    use_eager_tasks(loop)
    # Before anything else: a signal during the start must still stop (or reload) cleanly.
    stop = asyncio.Event()

    def begin_stop(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info(
                "%s: draining, up to %g s for requests in flight", sig.name, shutdown_timeout_s
            )
        if draining is not None:
            draining.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, begin_stop, sig)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    # A supervisor starts its workers with these blocked (see supervisor._block_stop_signals).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,  # the request log is the app's own (proxy.observe)
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=idle_timeout_s,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        for address in runner.addresses:
            log.info("llm-proxy listening on http://%s:%d", *address[:2])
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _warn_open_relay(settings: Settings, host: str) -> None:
    """Passthrough sends an upstream's api_key for requests that bring no key of their own: to
    loopback callers only, unless ``auth.lend_upstream_key`` lends it to everyone."""
    keyed = [u.name for u in settings.upstreams if u.api_key]
    if settings.auth.mode != "passthrough" or not keyed or is_loopback(host):
        return
    names = ", ".join(repr(n) for n in keyed)
    if settings.auth.lend_upstream_key:
        log.warning(
            "auth.mode is passthrough with auth.lend_upstream_key: true, upstream %s has an "
            "api_key and the proxy listens on %s: anyone who can reach the port can spend that "
            "key. Set auth.mode: keys (with auth.keys), lend_upstream_key: false, or listen on "
            "127.0.0.1",
            names,
            host,
        )
    else:
        log.info(
            "upstream %s has an api_key: it is sent for keyless requests from loopback only; "
            "keyless callers from other hosts get 401 (auth.lend_upstream_key: false)",
            names,
        )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0-65535 (0: any free port)")
    return port


#: The cyclic collector's youngest-generation threshold while serving (CPython's default is 700).
#: Every request allocates many tracked objects (its task, futures, dicts, headers), so at the
#: default the young generation was collected every few requests, ~15% of a pass-through
#: request's CPU. Objects freed by their reference count (nearly all of a request's) go at once
#: either way; only cyclic garbage waits a little longer.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Before serving: move what start-up made (modules, settings) out of the collector's sight
    (it lives as long as the process), and collect the young generation less often."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _run(
    settings: Settings,
    host: str,
    port: int,
    *,
    config_path: str | None,
    reuse_port: bool = False,
    metrics_dir: str | None = None,
) -> None:
    shared = Shared(metrics=Metrics(multiprocess_dir=metrics_dir))
    runtime = Runtime(settings, config_path=config_path, shared=shared)
    server = settings.server
    coro = serve(
        runtime.shell(),
        host=host,
        port=port,
        shutdown_timeout_s=server.shutdown_timeout_s,
        idle_timeout_s=server.idle_timeout_s,
        reuse_port=reuse_port,
        draining=shared.draining,
        on_reload=runtime.reload,
    )
    tune_gc()
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        runner.run(coro)


def _workers(value: str) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number of at least 1 or 'auto', got {value!r}"
        )
    return count


def _check_config(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-proxy check-config",
        description="Validate a config file; print the effective settings, secrets masked.",
    )
    parser.add_argument("path", help="YAML config file")
    ns = parser.parse_args(args)
    try:
        settings = load_config(ns.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(masked_dump(settings), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # A supervisor's workers share its stderr: their lines say which process wrote them.
    who = " [%(process)d]" if "--worker-of-supervisor" in args else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s{who} %(message)s"
    )
    if args[:1] == ["check-config"]:
        return _check_config(args[1:])
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        usage="%(prog)s [-h] [--version] [--config PATH] [--host H] [--port P] [--workers N]\n"
        "       %(prog)s check-config PATH",
        description="Reverse proxy for OpenAI-compatible APIs.",
        epilog="llm-proxy check-config PATH validates a config file and prints the effective "
        "settings, secrets masked (exit 2 on a mistake).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help="YAML config file (default: $LLM_PROXY_CONFIG)"
    )
    parser.add_argument("--host", metavar="H", help="listen address (default: server.host)")
    parser.add_argument(
        "--port",
        metavar="P",
        type=_port,
        help="listen port, 0-65535, 0 for any free one (default: server.port, 8080)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=_workers,
        help="worker processes on the port, or 'auto' for one per CPU (default: server.workers)",
    )
    # Internal: this process is one of a supervisor's workers.
    parser.add_argument("--worker-of-supervisor", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(args)
    try:
        settings = load_config(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # JSON or text, repeated warnings rate-limited; the request log itself is the app's.
    configure_logging(
        fmt=settings.server.log_format,
        level=settings.server.log_level,
        pid=ns.worker_of_supervisor,
    )
    # --workers, like --host and --port, is not written into the settings: a reload compares
    # the file with the file.
    server = settings.server
    if ns.workers is not None:
        server = server.model_copy(update={"workers": ns.workers})
    host = ns.host if ns.host is not None else settings.server.host
    port = ns.port if ns.port is not None else settings.server.port
    if ns.worker_of_supervisor:
        return _serve_or_2(
            settings,
            host,
            port,
            config_path=ns.config,
            reuse_port=True,
            metrics_dir=os.environ.get(METRICS_DIR_ENV),
        )
    _warn_open_relay(settings, host)
    count = server.worker_count
    if count > 1:
        problem = supervisor.refusal(settings, count)
        if problem is not None:
            print(f"llm-proxy: {problem}", file=sys.stderr)
            return 2
        return supervisor.run(settings, host=host, port=port, count=count, config_path=ns.config)
    return _serve_or_2(settings, host, port, config_path=ns.config)


def _serve_or_2(settings: Settings, host: str, port: int, **kwargs: Any) -> int:
    try:
        _run(settings, host, port, **kwargs)
    except ListenError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr)
        return 2
    return 0
