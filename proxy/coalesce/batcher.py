"""Micro-batching: small compatible embeddings/completions calls ride one upstream call.

Calls with the same upstream, tenant (unless ``cache.shared``), path and every parameter but the
input are collected into a batch; the batch is sent when it is full (``max_batch_size`` inputs or
``max_batch_tokens``) or when its window (``max_wait_ms``) ends, per the route's ``strategy``:

- ``both``: full or window, whichever comes first;
- ``window``: only when the window ends (a full batch is closed and a new one opened);
- ``size``: only when full, or when no new call arrived for ``max_wait_ms`` (a safety bound).

The answer is split back (see :mod:`.merge`). A 4xx on a merged call is retried member by member
so that only the guilty call fails; a 5xx or a timeout answers every member with that error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from multidict import CIMultiDict

from ..cache.keys import SHARED_SCOPE, canonical_body, variant
from ..call import Call, Next, Reply
from ..config import BatchingSettings, CacheSettings, RouteBatching
from ..errors import ProxyError, UpstreamError
from ..metrics import Metrics
from .merge import Parsed, SplitError, parse_items, split_completions, split_embeddings
from .singleflight import COALESCED

__all__ = ["Batcher", "LatencyModel", "Route"]

log = logging.getLogger(__name__)

#: 4xx answers that concern the whole call, not one member's input: answered to each member.
_NOT_RETRIED = frozenset({401, 403, 404, 408, 429})

Send = Callable[[Call, Parsed], Awaitable[Reply]]


_LOOP_GRANULARITY_MS = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    field: str  # the list-valued parameter: "input" or "prompt"
    settings: RouteBatching


class LatencyModel:
    """Upstream latency against inputs per call, by exponentially weighted least squares.

    It estimates how long a call of ``k`` inputs takes alone, for the batch efficiency metric
    (the design notes' 批处理效率: time of the requests alone / time of their batch).
    """

    def __init__(self, *, decay: float = 0.98) -> None:
        self.decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, inputs: int, seconds: float) -> None:
        d = self.decay
        self._w = self._w * d + 1
        self._x = self._x * d + inputs
        self._y = self._y * d + seconds
        self._xx = self._xx * d + inputs * inputs
        self._xy = self._xy * d + inputs * seconds

    def predict(self, inputs: int) -> float | None:
        """Expected seconds for ``inputs`` inputs; ``None`` until call sizes have varied."""
        if self._w == 0:
            return None
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var < 1e-9:
            return None
        slope = (self._xy / self._w - mx * my) / var
        return max(my + slope * (inputs - mx), 0.0)


class _Member:
    __slots__ = ("call", "parsed", "future")

    def __init__(self, call: Call, parsed: Parsed) -> None:
        self.call = call
        self.parsed = parsed
        self.future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def resolve(self, reply: Reply) -> None:
        if not self.future.done():
            self.future.set_result(reply)

    def fail(self, exc: ProxyError) -> None:
        if not self.future.done():
            self.future.set_exception(copy.copy(exc))


class _Batch:
    __slots__ = ("route", "group", "next_stage", "members", "inputs", "tokens", "timer", "sent")

    def __init__(self, route: Route, group: tuple[Any, ...], next_stage: Next) -> None:
        self.route = route
        self.group = group
        self.next_stage = next_stage
        self.members: list[_Member] = []
        self.inputs = 0
        self.tokens = 0
        self.timer: asyncio.Handle | None = None
        self.sent = False

    def fits(self, member: _Member) -> bool:
        rs = self.route.settings
        return (
            self.inputs + len(member.parsed.items) <= rs.max_batch_size
            and self.tokens + sum(member.parsed.tokens) <= rs.max_batch_tokens
        )

    def add(self, member: _Member) -> None:
        self.members.append(member)
        self.inputs += len(member.parsed.items)
        self.tokens += sum(member.parsed.tokens)

    @property
    def full(self) -> bool:
        rs = self.route.settings
        return self.inputs >= rs.max_batch_size or self.tokens >= rs.max_batch_tokens


class Batcher:
    """The micro-batching stage (``app[BATCHER]``); owns its timers and send tasks."""

    def __init__(
        self,
        *,
        settings: BatchingSettings,
        cache: CacheSettings,
        metrics: Metrics,
        inputs: Any = None,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        #: Per-input embedding cache (:class:`.embcache.InputCache`), or ``None``.
        self.inputs = inputs
        self.routes = {
            "/v1/embeddings": Route("/v1/embeddings", "input", settings.embeddings),
            "/v1/completions": Route("/v1/completions", "prompt", settings.completions),
        }
        self.latency = {path: LatencyModel() for path in self.routes}
        self._efficiency: dict[str, float] = {}
        self._open: dict[tuple[Any, ...], _Batch] = {}
        self._pending: set[_Batch] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, next_stage: Next) -> Next:
        async def batcher(call: Call) -> Reply:
            route = self.routes.get(call.path)
            if route is None or call.method != "POST" or call.stream or call.json is None:
                return await next_stage(call)
            parsed = parse_items(call.json.get(route.field))
            if parsed is None:
                return await next_stage(call)

            async def ride(sub_call: Call, sub: Parsed) -> Reply:
                return await self._ride(route, sub_call, sub, next_stage)

            if self.inputs is not None and route.field == "input":
                reply: Reply = await self.inputs.answer(call, parsed, ride)
                return reply
            return await ride(call, parsed)

        return batcher

    @property
    def waiting(self) -> int:
        """Callers in batches not sent yet."""
        return sum(len(batch.members) for batch in self._pending)

    async def aclose(self) -> None:
        """Cancel timers and send tasks; callers still waiting get an error, not a hang."""
        for batch in list(self._pending):
            self._unschedule(batch)
            for member in batch.members:
                member.fail(UpstreamError("The proxy is shutting down"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- collecting ------------------------------------------------------------------------

    def _batchable(self, route: Route, call: Call, parsed: Parsed) -> bool:
        rs = route.settings
        return (
            route.settings.enabled
            and call.upstream.settings.batching
            and len(parsed.items) < rs.max_batch_size
            and sum(parsed.tokens) < rs.max_batch_tokens
            and _n(call) is not None
        )

    async def _ride(self, route: Route, call: Call, parsed: Parsed, next_stage: Next) -> Reply:
        if not self._batchable(route, call, parsed):
            return await next_stage(call)
        member = _Member(call, parsed)
        self._add(route, member, next_stage)
        return await member.future

    def _group(self, route: Route, member: _Member) -> tuple[Any, ...]:
        call = member.call
        assert call.json is not None
        # The merged call goes out with the first member's credential: a shared cache may share
        # answers, but never lets one client's input ride on another client's key.
        shared = self.cache.shared and call.credential is None
        scope = SHARED_SCOPE if shared else call.tenant
        params = canonical_body(call.json, frozenset({route.field}))
        return (call.upstream.name, scope, call.path, variant(call), member.parsed.kind, params)

    def _add(self, route: Route, member: _Member, next_stage: Next) -> None:
        strategy = route.settings.strategy
        group = self._group(route, member)
        batch = self._open.get(group)
        if batch is not None and not batch.fits(member):
            self._close(batch)
            batch = None
        if batch is None:
            batch = self._open[group] = _Batch(route, group, next_stage)
            self._pending.add(batch)
            self._schedule(batch)
        elif strategy == "size":
            self._schedule(batch)  # the idle bound starts again with each arrival
        batch.add(member)
        if batch.full:
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        """No more members: send now, or (``window``) when the window ends."""
        if self._open.get(batch.group) is batch:
            del self._open[batch.group]
        if batch.route.settings.strategy != "window":
            self._flush(batch)

    def _schedule(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        if batch.timer is not None:
            batch.timer.cancel()
        # Event loops wait on epoll in whole milliseconds, rounded up, so a timer fires up to
        # 1 ms late: aim that much early, so the batch leaves within its window, not after it.
        delay_s = max(0.0, batch.route.settings.max_wait_ms - _LOOP_GRANULARITY_MS) / 1000
        if batch.route.settings.max_wait_ms <= 0:
            batch.timer = loop.call_soon(self._flush, batch)
        else:
            batch.timer = loop.call_later(delay_s, self._flush, batch)

    def _unschedule(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.group) is batch:
            del self._open[batch.group]
        self._pending.discard(batch)

    def _flush(self, batch: _Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        self._unschedule(batch)
        members = [m for m in batch.members if not m.future.done()]  # gone: left the batch
        if members:
            task = asyncio.create_task(self._send(batch.route, members, batch.next_stage))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, route: Route, members: list[_Member], next_stage: Next) -> None:
        try:
            if len(members) == 1:
                await self._alone(route, members[0], next_stage)
                return
            call = _merged(route, members)
            inputs = sum(len(m.parsed.items) for m in members)
            self.metrics.batches.labels(route.path).inc()
            self.metrics.calls_saved.labels(cause="batching").inc(len(members) - 1)
            self.metrics.batch_size.labels(route.path).observe(inputs)
            start = asyncio.get_running_loop().time()
            reply = await next_stage(call)
            elapsed = asyncio.get_running_loop().time() - start
            if reply.ok:
                self._observe(route, members, inputs, elapsed)
            await self._deliver(route, members, reply, next_stage)
        except ProxyError as exc:
            for member in members:
                member.fail(exc)
        finally:
            for member in members:
                member.fail(UpstreamError("The batched upstream call was abandoned"))

    async def _deliver(
        self, route: Route, members: list[_Member], reply: Reply, next_stage: Next
    ) -> None:
        if reply.stream is not None:
            await reply.aclose()
            raise UpstreamError("The upstream streamed its answer to a merged call")
        if reply.ok:
            try:
                answers = _split(route, members, reply.body or b"")
            except (SplitError, orjson.JSONDecodeError) as exc:
                log.warning("cannot split a merged %s answer (%s); retrying alone", route.path, exc)
            else:
                for member, answer in zip(members, answers, strict=True):
                    member.call.note.batch = len(members)
                    headers = CIMultiDict(reply.headers)
                    headers[COALESCED] = str(len(members))
                    member.resolve(Reply(reply.status, headers, body=orjson.dumps(answer)))
                return
        elif reply.status in _NOT_RETRIED or reply.status >= 500:
            for member in members:
                member.resolve(Reply(reply.status, CIMultiDict(reply.headers), body=reply.body))
            return
        # A member's input was refused (or the answer made no sense): each one alone.
        await asyncio.gather(*(self._alone(route, m, next_stage) for m in members))

    async def _alone(self, route: Route, member: _Member, next_stage: Next) -> None:
        if member.future.done():
            return
        try:
            start = asyncio.get_running_loop().time()
            reply = await next_stage(member.call)
            if reply.ok:
                elapsed = asyncio.get_running_loop().time() - start
                self.latency[route.path].observe(len(member.parsed.items), elapsed)
            member.resolve(reply)
        except ProxyError as exc:
            member.fail(exc)

    def _observe(self, route: Route, members: list[_Member], inputs: int, elapsed: float) -> None:
        model = self.latency[route.path]
        model.observe(inputs, elapsed)
        alone = [model.predict(len(m.parsed.items)) for m in members]
        if elapsed <= 0 or any(t is None for t in alone):
            return
        efficiency = sum(t for t in alone if t is not None) / elapsed
        previous = self._efficiency.get(route.path)
        smoothed = efficiency if previous is None else previous * 0.9 + efficiency * 0.1
        self._efficiency[route.path] = smoothed
        self.metrics.batch_efficiency.labels(route.path).set(smoothed)


def _n(call: Call) -> int | None:
    assert call.json is not None
    n = call.json.get("n", 1)
    if n is None:
        return 1
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def _merged(route: Route, members: list[_Member]) -> Call:
    first = members[0].call
    assert first.json is not None
    items = [item for m in members for item in m.parsed.items]
    data = {**first.json, route.field: items}
    return first.with_body(data, orjson.dumps(data)).with_key(None)


def _split(route: Route, members: list[_Member], body: bytes) -> list[dict[str, Any]]:
    answer = orjson.loads(body)
    parsed = [m.parsed for m in members]
    if route.field == "prompt":
        first = members[0].call.json or {}
        n, echo = _n(members[0].call) or 1, first.get("echo") is True
        return split_completions(answer, parsed, n, echo=echo)
    return split_embeddings(answer, parsed)
