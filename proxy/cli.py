"""Command line: ``llm-proxy [--config PATH] [--host H] [--port P]`` and ``check-config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.log import access_logger

from .app import create_app
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
    access_log: bool = False,
) -> None:
    """Run ``app`` until SIGINT/SIGTERM; a client that goes away cancels its handler."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=access_logger if access_log else None,
        shutdown_timeout=shutdown_timeout_s,
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _warn_open_relay(settings: Settings, host: str) -> None:
    """Passthrough sends an upstream's api_key for requests that bring no key of their own."""
    keyed = [u.name for u in settings.upstreams if u.api_key]
    if settings.auth.mode == "passthrough" and keyed and not _is_loopback(host):
        log.warning(
            "auth.mode is passthrough, upstream %s has an api_key and the proxy listens on %s: "
            "anyone who can reach the port can spend that key. Set auth.mode: keys (with "
            "auth.keys) or listen on 127.0.0.1",
            ", ".join(repr(n) for n in keyed),
            host,
        )


def _run(settings: Settings, host: str, port: int) -> None:
    app = create_app(settings)
    server = settings.server
    coro = serve(
        app,
        host=host,
        port=port,
        shutdown_timeout_s=server.shutdown_timeout_s,
    )
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args[:1] == ["check-config"]:
        parser = argparse.ArgumentParser(prog="llm-proxy check-config")
        parser.add_argument("path")
        ns = parser.parse_args(args[1:])
        try:
            settings = load_config(ns.path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(json.dumps(masked_dump(settings), indent=2))
        return 0
    parser = argparse.ArgumentParser(
        prog="llm-proxy", description="Reverse proxy for OpenAI-compatible APIs."
    )
    parser.add_argument("--config", help="YAML config file (default: $LLM_PROXY_CONFIG)")
    parser.add_argument("--host", help="listen address (default: server.host)")
    parser.add_argument("--port", type=int, help="listen port (default: server.port, 8080)")
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
