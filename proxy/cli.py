"""Command line: ``llm-proxy [--config PATH] [--host H] [--port P]`` and ``check-config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app
from .config import ConfigError, Settings, load_config, masked_dump

__all__ = ["main", "serve"]

log = logging.getLogger("proxy")


async def serve(app: web.Application, *, host: str, port: int, shutdown_timeout_s: float) -> None:
    """Run ``app`` until SIGINT/SIGTERM; a client that goes away cancels its handler."""
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        log.info("llm-proxy listening on http://%s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def _run(settings: Settings, host: str, port: int) -> None:
    app = create_app(settings)
    coro = serve(app, host=host, port=port, shutdown_timeout_s=settings.server.shutdown_timeout_s)
    try:
        import uvloop  # noqa: PLC0415  (optional speed-up)
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


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
    _run(settings, ns.host or settings.server.host, ns.port or settings.server.port)
    return 0
