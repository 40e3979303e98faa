"""Real servers for tests: an event loop in a thread that runs apps on loopback ports.

Tests can then use the sync ``openai`` client, the async one, or raw HTTP, against real sockets.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from proxy.cli import use_eager_tasks

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop running in a daemon thread until ``close``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        use_eager_tasks(self.loop)  # as the command line runs the proxy (Python 3.12+)
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (to touch loop-bound objects safely)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class LiveApp:
    """An aiohttp app served on 127.0.0.1 from a :class:`BackgroundLoop`."""

    def __init__(self, bg: BackgroundLoop, app: web.Application) -> None:
        self.bg = bg
        self.app = app
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.tls = False

    def start(self, port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> LiveApp:
        """Serve on ``port`` (0: a free one), over TLS with ``ssl_context``."""

        async def start() -> int:
            self.runner = web.AppRunner(
                self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1
            )
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ssl_context)
            await site.start()
            server = site._server
            assert server is not None
            return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = self.bg.run(start())
        self.tls = ssl_context is not None
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            self.bg.run(runner.cleanup())

    def run(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return self.bg.run(wrap())
