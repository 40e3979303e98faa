"""Command line: ``llm-proxy [--version] [--config PATH] [--host H] [--port P]`` and
``llm-proxy check-config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.log import access_logger

from . import __version__
from .app import create_app
from .auth import is_loopback
from .config import ConfigError, Settings, load_config, masked_dump
from .observe.logs import configure_logging

try:
    import uvloop
except ImportError:  # not built for Windows: the standard loop is slower but works
    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = None
else:
    _LOOP_FACTORY = uvloop.new_event_loop

__all__ = ["ListenError", "main", "serve"]

log = logging.getLogger("proxy")


class ListenError(Exception):
    """The listening socket could not be opened (port in use, address not local)."""


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    idle_timeout_s: float = 75.0,
    access_log: bool = False,
) -> None:
    """Run ``app`` until SIGINT/SIGTERM; a client that goes away cancels its handler."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=access_logger if access_log else None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=idle_timeout_s,
    )
    await runner.setup()
    try:
        # Before listening: a SIGTERM right after the start line must still stop cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        site = web.TCPSite(runner, host, port, backlog=2048)
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


def _run(settings: Settings, host: str, port: int) -> None:
    app = create_app(settings)
    server = settings.server
    coro = serve(
        app,
        host=host,
        port=port,
        shutdown_timeout_s=server.shutdown_timeout_s,
        idle_timeout_s=server.idle_timeout_s,
    )
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args[:1] == ["check-config"]:
        parser = argparse.ArgumentParser(
            prog="llm-proxy check-config",
            description="Validate a config file; print the effective settings, secrets masked.",
        )
        parser.add_argument("path", help="YAML config file")
        ns = parser.parse_args(args[1:])
        try:
            settings = load_config(ns.path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps(masked_dump(settings), indent=2))
        return 0
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        usage="%(prog)s [-h] [--version] [--config PATH] [--host H] [--port P]\n"
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
    ns = parser.parse_args(args)
    try:
        settings = load_config(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # JSON or text, repeated warnings rate-limited; the request log itself is the app's.
    configure_logging(fmt=settings.server.log_format, level=settings.server.log_level)
    host = ns.host if ns.host is not None else settings.server.host
    port = ns.port if ns.port is not None else settings.server.port
    _warn_open_relay(settings, host)
    try:
        _run(settings, host, port)
    except ListenError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr)
        return 2
    return 0
