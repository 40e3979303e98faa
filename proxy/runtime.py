"""Live reload: the served app hands each request to the current *generation*.

A generation is a whole app built by ``create_app(settings)``: router and upstream sessions,
auth, pipeline stages, the door, the job worker. The listening server serves a small *shell* app
whose one route passes every request to the current generation, which then handles it exactly as
if it were served directly (its own routes, middlewares and state: ``request.app`` is the
generation).

SIGHUP reads the config file again. A file that does not load (invalid YAML, unknown key, wrong
type) is refused with one log line and the running generation stays. A good one becomes a new
generation, started beside the old one and then swapped in (one assignment: a request is on one
generation or the other, never on a mix). The old generation stops its background work at once (its
``on_shutdown``: the job dispatcher and the batch runner hand their work back for the new one) and
is closed once its last request has finished, so in-flight requests and streams end on the settings
they started with and no connection is dropped. Resources whose settings did not change are handed
over rather than reopened (see :mod:`proxy.resources`): upstream connection pools, the Redis
client, the memory cache with its entries, the memory job store with its jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from .app import create_app
from .config import ConfigError, Settings, load_config
from .observe.logs import ALWAYS
from .resources import Shared

__all__ = ["Runtime", "restart_only_changes"]

log = logging.getLogger("proxy")

#: Settings the running process cannot change: the listening socket, the process layout, the
#: HTTP server's own limits.
_RESTART_ONLY = ("host", "port", "workers", "max_body_bytes", "shutdown_timeout_s", "access_log")


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The ``server.*`` keys that differ and only apply after a restart."""
    return [
        f"server.{name}"
        for name in _RESTART_ONLY
        if getattr(old.server, name, None) != getattr(new.server, name, None)
    ]


class Generation:
    """One app built from one ``Settings``, and how many requests it is handling."""

    __slots__ = ("active", "app", "idle", "settings")

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.active = 0
        self.idle = asyncio.Event()


class Runtime:
    """Owns the current generation, swaps it on reload, closes the old ones when idle."""

    def __init__(self, settings: Settings, *, config_path: str | Path | None, shared: Shared):
        self.settings = settings
        self.config_path = config_path
        self.shared = shared
        self._current: Generation | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloading: asyncio.Task[None] | None = None
        #: A reload was asked for while one (or the start) was under way.
        self._reload_again = False

    @property
    def current(self) -> Generation:
        assert self._current is not None, "Runtime.start() first"
        return self._current

    def shell(self) -> web.Application:
        """The app the server runs: one route into the current generation."""
        shell = web.Application(client_max_size=self.settings.server.max_body_bytes)
        # The generation answers ``Expect: 100-continue`` itself; the shell must not answer too.
        shell.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=_leave_expect)
        shell.cleanup_ctx.append(self._lifetime)
        return shell

    async def _lifetime(self, _shell: web.Application) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def start(self) -> None:
        self._current = await self._open(self.settings)
        if self._reload_again:  # a SIGHUP came while the first generation was starting
            self.reload()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gen = self._current
        assert gen is not None
        gen.active += 1
        try:
            return await gen.app._handle(request)
        finally:
            gen.active -= 1
            if gen.active == 0 and gen is not self._current:
                gen.idle.set()

    def reload(self) -> None:
        """SIGHUP: reload in the background; a signal during a reload (or during the start)
        asks for one more after it."""
        starting = self._current is None
        if starting or (self._reloading is not None and not self._reloading.done()):
            self._reload_again = True
            return
        self._reloading = asyncio.create_task(self._reload_loop(), name="config-reload")

    async def wait_reloaded(self) -> None:
        """Until the reload in progress (if any) has finished."""
        if self._reloading is not None:
            await asyncio.shield(self._reloading)

    @property
    def generations(self) -> int:
        """The current generation and the old ones still finishing requests."""
        return len(self._retiring) + (self._current is not None)

    async def retired(self) -> None:
        """Until every old generation has been closed."""
        await asyncio.gather(*self._retiring)

    async def _reload_loop(self) -> None:
        while True:
            self._reload_again = False
            await self._reload_once()
            if not self._reload_again:
                return

    async def _reload_once(self) -> None:
        try:
            settings = load_config(self.config_path)
        except ConfigError as exc:
            problem = "; ".join(str(exc).splitlines())
            log.error(
                "reload refused, still serving the previous config: %s", problem, extra=ALWAYS
            )
            return
        for key in restart_only_changes(self.settings, settings):
            log.warning(
                "reload: %s changed, which takes effect only after a restart", key, extra=ALWAYS
            )
        try:
            gen = await self._open(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the new config is refused, whatever broke: keep serving
            log.error(
                "reload refused, still serving the previous config: the new one did not start "
                "(%s: %s)",
                type(exc).__name__,
                exc,
                extra=ALWAYS,
            )
            return
        old, self._current, self.settings = self._current, gen, settings
        if old is not None:
            task = asyncio.create_task(self._retire(old), name="retire-generation")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info("config reloaded from %s", self.config_path or "the built-in defaults")

    async def _open(self, settings: Settings) -> Generation:
        app = create_app(settings, shared=self.shared)
        # As aiohttp's AppRunner does: start (the cleanup contexts fill the app's state), then
        # freeze (the router and middlewares are fixed, the app can handle requests).
        app.on_startup.freeze()
        try:
            await app.startup()
        except BaseException:
            await app.cleanup()  # closes whatever did open
            raise
        app.freeze()
        return Generation(app, settings)

    async def _retire(self, gen: Generation) -> None:
        """Stop an old generation's background work at once (on_shutdown: job dispatcher, batch
        runner; the new generation takes their work over), and close it once its last request
        (or stream) has ended."""
        await gen.app.shutdown()
        if gen.active:
            await gen.idle.wait()
        await gen.app.cleanup()

    async def close(self) -> None:
        """At shutdown, after the server stopped its handlers: close every generation."""
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._current is not None:
            current, self._current = self._current, None
            await _close(current)


async def _close(gen: Generation) -> None:
    """What an AppRunner does for the app it served: on_shutdown, then the cleanup contexts."""
    await gen.app.shutdown()
    await gen.app.cleanup()


async def _leave_expect(request: web.Request) -> None:
    return None
