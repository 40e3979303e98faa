"""Readiness: can this replica serve, and which optional parts are degraded.

``GET /readyz`` answers 200 while the replica can serve synchronous traffic, naming the parts
that are degraded (``cache``: its Redis is away, requests go to the upstream; ``jobs``: the job
store is unavailable, submissions get 503; ``redis``: the shared Redis does not answer, so
coalescing stays within the replica). Replicas share one Redis: if its outage made them all
not ready, a load balancer would have nowhere left to send traffic. An upstream outage is not a
readiness failure either: a client is better served by the proxy's clear 502.

It answers 503 only while the replica cannot serve: before start-up has finished, and while it
drains. The graceful stop sets the process's draining event (``proxy.resources.Shared``) when
SIGTERM arrives, so that load balancers stop sending new requests while in-flight ones finish.
``server.ready_requires_redis: true`` is the strict form: any degraded part is a 503.

A part guarded by a circuit breaker (the cache) is :meth:`Readiness.watch`-ed: while its breaker
is open, a background probe asks Redis every ``redis.breaker_cooldown_s`` and closes the breaker
when it answers, so the part comes back with no traffic at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from redis.exceptions import RedisError

from .breaker import Breaker
from .redis_client import raise_if_cancelled

__all__ = ["Check", "Readiness", "redis_ping"]

log = logging.getLogger(__name__)

#: An async callable: why the part is degraded right now, or ``None`` when it is fine.
Check = Callable[[], Awaitable[str | None]]
#: What a broken, slow or missing Redis raises.
PROBE_ERRORS = (RedisError, OSError, TimeoutError)
#: ``/readyz`` answers in time even when Redis accepts connections but never replies.
CHECK_TIMEOUT_S = 1.0
#: A zero cooldown must not turn the background probe into a busy loop.
MIN_PROBE_INTERVAL_S = 0.1


def redis_ping(client: Any, problem: str) -> Check:
    """A check that pings ``client``; ``problem`` names what a failure degrades."""

    async def check() -> str | None:
        try:
            await client.ping()
        except PROBE_ERRORS as exc:
            raise_if_cancelled()
            return f"{problem} ({type(exc).__name__})"
        return None

    return check


@dataclass(frozen=True, slots=True)
class _Watched:
    breaker: Breaker
    probe: Callable[[], Awaitable[object]]
    timeout_s: float
    problem: str


class Readiness:
    """``app[READINESS]``: the checks of the degraded parts, and the starting/draining state."""

    def __init__(
        self,
        *,
        requires_redis: bool = False,
        gauge: Gauge | None = None,
        draining: asyncio.Event | None = None,
    ) -> None:
        self.requires_redis = requires_redis
        self.started = False
        #: Set when a graceful stop begins; shared by every app of the process (a reload's too).
        self._draining = asyncio.Event() if draining is None else draining
        self._gauge = gauge
        self._checks: dict[str, Check] = {}
        self._watched: dict[str, _Watched] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add_check(self, part: str, check: Check) -> None:
        """Report ``part`` as degraded whenever ``check`` names a problem."""
        self._checks[part] = check

    def watch(
        self,
        part: str,
        breaker: Breaker,
        probe: Callable[[], Awaitable[object]],
        *,
        timeout_s: float,
        problem: str,
    ) -> None:
        """``part`` is degraded while ``breaker`` is open; ``probe`` (e.g. a Redis PING, raising
        on failure) closes it again, from the background, with no traffic needed."""
        self._watched[part] = _Watched(breaker, probe, timeout_s, problem)

    def drain(self) -> None:
        """From now on this replica is not ready (SIGTERM: finish what runs, take nothing new)."""
        self._draining.set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def degraded(self) -> dict[str, str]:
        """Every degraded part and why, as of now (also set on the ``llm_proxy_degraded`` gauge)."""
        parts = [*self._checks, *self._watched]
        results = await asyncio.gather(*(self._problem(part) for part in parts))
        found = {p: r for p, r in zip(parts, results, strict=True) if r is not None}
        if self._gauge is not None:
            for part in parts:
                self._gauge.labels(part=part).set(1 if part in found else 0)
        return found

    async def report(self) -> tuple[int, dict[str, Any]]:
        """The ``/readyz`` answer: status code and body."""
        degraded = await self.degraded()
        problems: dict[str, str] = {}
        if not self.started:
            problems["starting"] = "the proxy is starting"
        if self.draining:
            problems["draining"] = "the proxy is shutting down and takes no new requests"
            return 503, {"status": "draining", "problems": problems, "degraded": {}}
        if self.requires_redis:
            problems.update(degraded)  # server.ready_requires_redis: a degraded part is fatal
        status = "not ready" if problems else "degraded" if degraded else "ready"
        body = {"status": status, "problems": problems, "degraded": degraded}
        return (503 if problems else 200), body

    async def start(self) -> None:
        """Start-up has finished: ready, and the watched breakers heal in the background."""
        self._tasks = [
            asyncio.create_task(self._heal(watched), name=f"readiness-probe-{part}")
            for part, watched in self._watched.items()
        ]
        self.started = True

    async def stop(self) -> None:
        self.started = False  # this app is closing (a reload's old generation, or a stop)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _problem(self, part: str) -> str | None:
        watched = self._watched.get(part)
        if watched is not None:
            # An open breaker is closed by the background probe only; a closed one is tried
            # now, so that an outage without traffic shows too.
            if watched.breaker.is_open or not await self._probe(watched):
                return watched.problem
            return None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return await self._checks[part]()
        except TimeoutError:
            return f"{part}: no answer within {CHECK_TIMEOUT_S:g} s"

    async def _probe(self, watched: _Watched) -> bool:
        """Ask once; close or (re)open the breaker by the answer."""
        try:
            async with asyncio.timeout(watched.timeout_s):
                await watched.probe()
        except PROBE_ERRORS as exc:
            raise_if_cancelled()
            watched.breaker.failed("probe", exc)
            return False
        watched.breaker.succeeded()
        return True

    async def _heal(self, watched: _Watched) -> None:
        interval_s = max(watched.breaker.cooldown_s, MIN_PROBE_INTERVAL_S)
        while True:
            await asyncio.sleep(interval_s)
            if watched.breaker.is_open:
                await self._probe(watched)
