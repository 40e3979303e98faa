"""Single flight: identical calls in flight share one upstream call.

The first call of a key starts a *flight*: a task owned by :class:`SingleFlight` that calls the
stage below and records the answer. Every call of that key (the first one too) waits for the
flight and gets its own copy of the answer; streams are followed through a :class:`ChunkLog`
from the first chunk. The flight does not belong to any client: when the first client goes
away the others still get their answer, and only when nobody is left is the call cancelled.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging

import orjson
from multidict import CIMultiDict

from ..cache.keys import drop_fields, is_deterministic, request_key
from ..cache.responses import RESPONSES, is_background
from ..cache.stage import SAMPLING_ROUTES
from ..call import Call, Next, Reply
from ..config import CacheSettings
from ..errors import ProxyError, UpstreamError
from ..metrics import Metrics
from .fanout import ChunkLog
from .remote import Claim, Record, RemoteFlights

__all__ = ["SingleFlight", "flight_key"]

log = logging.getLogger(__name__)

COALESCED = "X-Coalesced"


def flight_key(call: Call, cache: CacheSettings) -> str | None:
    """What makes two calls the same flight: the cache key, the transport and stream options."""
    if call.method != "POST" or call.json is None or not call.cache.may_share:
        return None
    if call.path == RESPONSES and is_background(call.json):
        return None  # each starts its own background response, with its own id
    key = call.key
    if key is None:
        if call.path not in cache.routes:
            return None
        key = request_key(call, settings=cache, drop=drop_fields(cache))
    if cache.only_deterministic and call.path in SAMPLING_ROUTES:
        if not is_deterministic(call.json):
            return None  # the cache would not store it: each caller gets its own sample
    if cache.shared and call.credential is not None:
        # Answers are shared, calls are not: a follower must never get an error (401, 429)
        # that belongs to another client's key.
        key = f"{key}.{call.tenant}"
    if not call.stream:
        return key
    options = orjson.dumps(call.json.get("stream_options"), option=orjson.OPT_SORT_KEYS)
    return f"{key}.s{hashlib.sha256(options).hexdigest()[:16]}"


class _Flight:
    __slots__ = ("key", "task", "ready", "log", "refs", "joined", "remote_served")

    def __init__(self, key: str) -> None:
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.log: ChunkLog | None = None
        self.refs = 0  # waiters still holding on (a stream reader holds until it closes)
        self.joined = 0  # client requests this flight served
        self.remote_served = 0  # ... and how many the replica that answered it served

    @property
    def joinable(self) -> bool:
        """A newcomer can still get the whole answer (a long stream is not kept whole)."""
        return self.log is None or self.log.whole

    @property
    def settled(self) -> bool:
        return self.ready.done() and (self.log is None or self.log.done)


class SingleFlight:
    """The single-flight stage (``app[SINGLEFLIGHT]``); its flight tasks die with it."""

    def __init__(
        self, *, cache: CacheSettings, metrics: Metrics, remote: RemoteFlights | None = None
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.remote = remote
        self._flights: dict[str, _Flight] = {}

    def wrap(self, next_stage: Next) -> Next:
        async def single_flight(call: Call) -> Reply:
            key = flight_key(call, self.cache)
            if key is None:
                return await next_stage(call)
            flight = self._flights.get(key)
            leader = flight is None or not flight.joinable
            if flight is None or leader:
                flight = self._flights[key] = _Flight(key)
                flight.task = asyncio.create_task(self._run(flight, call, next_stage))
            else:
                self.metrics.deduplicated.inc()
            reply = await self._join(flight, leader=leader)
            return reply if reply is not None else await next_stage(call)

        return single_flight

    async def aclose(self) -> None:
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- waiters ---------------------------------------------------------------------------

    async def _join(self, flight: _Flight, *, leader: bool) -> Reply | None:
        """The flight's answer for one waiter; ``None`` when its stream has outgrown the bound
        before this waiter got to it (another read past it first): it must go alone."""
        flight.refs += 1
        flight.joined += 1
        try:
            reply = await asyncio.shield(flight.ready)
        except ProxyError as exc:
            self._release(flight)
            raise copy.copy(exc) from None
        except asyncio.CancelledError:
            self._release(flight)
            raise
        follower = not leader or flight.remote_served > 0
        served = flight.joined + flight.remote_served
        headers = CIMultiDict(reply.headers)
        if served > 1:
            headers[COALESCED] = str(served)
        if flight.log is None:
            self._release(flight)
            return Reply(reply.status, headers, body=reply.body, follower=follower)

        if not flight.log.whole:
            flight.joined -= 1  # not served by this flight after all
            self._release(flight)
            return None
        stream = flight.log.reader()

        async def close() -> None:
            stream.close()
            self._release(flight)

        return Reply(reply.status, headers, stream=stream, closer=close, follower=follower)

    def _release(self, flight: _Flight) -> None:
        flight.refs -= 1
        if flight.refs == 0 and not flight.settled and flight.task is not None:
            # Nobody is left to answer: stop the upstream call and let the next caller start anew.
            self._forget(flight)
            flight.task.cancel()

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    # --- the flight ------------------------------------------------------------------------

    async def _run(self, flight: _Flight, call: Call, next_stage: Next) -> None:
        try:
            if self.remote is None:
                await self._lead(flight, call, next_stage, None)
                return
            outcome = await self.remote.acquire(flight.key)
            if isinstance(outcome, Record):
                self._resolve_remote(flight, outcome)
            elif outcome is None:
                await self._lead(flight, call, next_stage, None)
            else:
                async with self.remote.holding(outcome):
                    await self._lead(flight, call, next_stage, outcome)
        finally:
            self._forget(flight)
            if not flight.ready.done():
                # Cancelled (shutdown, or nobody left): any waiter still there gets an answer.
                flight.ready.set_exception(UpstreamError("The upstream call was abandoned"))
                if flight.refs == 0:
                    flight.ready.exception()  # retrieved: nobody is waiting for it
            if flight.log is not None and not flight.log.done:
                flight.log.finish(UpstreamError("The upstream stream was abandoned"))

    async def _lead(
        self, flight: _Flight, call: Call, next_stage: Next, claim: Claim | None
    ) -> None:
        published = False
        try:
            try:
                reply = await next_stage(call)
            except ProxyError as exc:
                flight.ready.set_exception(exc)
                self._forget(flight)
                record = Record(exc.status, [("Content-Type", "application/json")], exc.to_bytes())
                published = await self._publish(claim, record, flight)
                return
            if reply.stream is None:
                flight.ready.set_result(reply)
                self._forget(flight)
                record = Record(reply.status, list(reply.headers.items()), reply.body)
                published = await self._publish(claim, record, flight)
                return
            chunks = flight.log = ChunkLog(reply.stream, max_bytes=self.cache.max_entry_bytes)
            flight.ready.set_result(reply)
            # The readers drive the upstream read themselves (no pump: no added delay for the
            # leader); this task only waits for the end, to publish the recording.
            try:
                if not await chunks.kept():
                    # Too long to keep whole: newcomers, here and on other replicas, make their
                    # own call; the readers already attached are served to the end.
                    self._forget(flight)
                    await self._give_up(claim)
                    claim = None
                ended_well = await chunks.finished()
            finally:
                await reply.aclose()
            if ended_well:
                self._forget(flight)
                record = Record(reply.status, list(reply.headers.items()), chunks=chunks.chunks)
                published = await self._publish(claim, record, flight)
        finally:
            if not published:
                await self._give_up(claim)

    async def _give_up(self, claim: Claim | None) -> None:
        if claim is not None and self.remote is not None:
            await self.remote.release(claim)

    async def _publish(self, claim: Claim | None, record: Record, flight: _Flight) -> bool:
        """Hand the answer to other replicas' waiters; not one larger than the bound (they
        then make their own call, as the cache would not keep it either)."""
        if claim is None or self.remote is None or record.size > self.cache.max_entry_bytes:
            return False
        served = Record(record.status, record.headers, record.body, record.chunks, flight.joined)
        await self.remote.publish(claim, served)
        return True

    def _resolve_remote(self, flight: _Flight, record: Record) -> None:
        """Another replica answered: every caller here is a follower."""
        self.metrics.deduplicated.inc()
        flight.remote_served = record.served
        headers = CIMultiDict(record.headers)
        if record.chunks is None:
            flight.ready.set_result(Reply(record.status, headers, body=record.body))
            return
        chunks = flight.log = ChunkLog()
        for chunk in record.chunks:
            chunks.append(chunk)
        chunks.finish()
        flight.ready.set_result(Reply(record.status, headers, stream=chunks.reader()))
