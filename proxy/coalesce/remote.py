"""Single flight across replicas: a claim in Redis, the leader's result published through it.

One replica takes the key's claim (a random token, ``SET NX PX``) and calls the upstream; the
others learn the token of the claim they found, subscribe to the key's channel and wait for the
result of *that* claim, for at most ``coalescing.cross_replica_wait_s``. A result is stored under
its claim's token, so a caller never gets the answer of a call it did not wait for (an old
error, say, while a newer call holds the claim). A dead leader's claim expires after
``claim_ttl_s``; a waiter that sees its claim gone without a result takes the claim or waits for
the next holder, within the same bound. Every Redis failure fails open: the request is then
simply sent on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from ..breaker import Breaker
from ..metrics import Metrics
from ..redis_client import raise_if_cancelled

__all__ = ["Claim", "FlightKeys", "Record", "RemoteFlights"]

log = logging.getLogger(__name__)

_FAILURES = (RedisError, OSError, TimeoutError, ConnectionError)
#: How often a waiter re-checks whether the claim still stands (a dead leader's claim expires).
_POLL_S = 0.2
#: A published result only has to outlive the notification that announces it.
_RESULT_TTL_MS = 5000

_CLAIM = """
local holder = redis.call('get', KEYS[1])
if holder then return {0, holder} end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_PUBLISH = """
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[4], '1')
return 1
"""


@dataclass(frozen=True, slots=True)
class FlightKeys:
    """Every Redis name single flight uses, built from one prefix. The hash tag keeps a
    flight's keys in one Redis Cluster slot."""

    claim: str
    channel: str
    results: str

    @classmethod
    def of(cls, prefix: str, flight_id: str) -> FlightKeys:
        base = f"{prefix}:flight:{{{flight_id}}}"
        return cls(claim=f"{base}:claim", channel=f"{base}:done", results=f"{base}:result:")

    def result(self, token: str) -> str:
        """Where the answer of the claim ``token`` is published: only its waiters read it."""
        return self.results + token


@dataclass(frozen=True, slots=True)
class Record:
    """A finished answer as it travels between replicas."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None = None
    chunks: list[bytes] | None = None
    served: int = 1

    @property
    def size(self) -> int:
        """Bytes of the answer's body or chunks."""
        if self.chunks is not None:
            return sum(len(chunk) for chunk in self.chunks)
        return len(self.body or b"")

    def encode(self) -> bytes:
        parts = self.chunks if self.chunks is not None else [self.body or b""]
        head = {
            "s": self.status,
            "h": self.headers,
            "c": [len(p) for p in parts],
            "stream": self.chunks is not None,
            "n": self.served,
        }
        return orjson.dumps(head) + b"\n" + b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        line, _, payload = raw.partition(b"\n")
        head = orjson.loads(line)
        parts, pos = [], 0
        for size in head["c"]:
            parts.append(payload[pos : pos + size])
            pos += size
        headers = [(str(k), str(v)) for k, v in head["h"]]
        if head["stream"]:
            return cls(head["s"], headers, chunks=parts, served=head["n"])
        return cls(head["s"], headers, body=parts[0] if parts else b"", served=head["n"])


class _Garbage(ValueError):
    """A published result that does not decode (a waiter then goes alone: fail open)."""


def _decoded(raw: bytes) -> Record:
    try:
        return Record.decode(raw)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
        raise _Garbage("the published flight result does not decode") from exc


@dataclass(frozen=True, slots=True)
class Claim:
    """A flight's claim: ``mine`` when this replica holds it, else the holder's ``token``."""

    keys: FlightKeys
    token: str
    mine: bool = True


class Lapsed:
    """What :meth:`RemoteFlights.wait` returns when its claim is gone without a result."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RemoteFlights:
    """Claims, waits and publications for one app, on its Redis client."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        wait_s: float,
        claim_ttl_s: float,
        op_timeout_s: float,
        breaker_cooldown_s: float,
        metrics: Metrics,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.wait_s = wait_s
        self.claim_ttl_ms = max(1, int(claim_ttl_s * 1000))
        self.op_timeout_s = op_timeout_s
        self.metrics = metrics
        # A Redis that is down or frozen must not cost every request an op timeout.
        self.breaker = Breaker(
            cooldown_s=breaker_cooldown_s,
            name="single-flight redis",
            fallback="coalescing within this replica only",
        )
        self._take = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._publish = redis.register_script(_PUBLISH)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()
        self.breaker.failed(op, exc)

    async def _claim(self, keys: FlightKeys) -> Claim:
        """Take the claim (our token) or learn who holds it (their token), in one step; Redis
        errors propagate."""
        async with asyncio.timeout(self.op_timeout_s):
            taken, holder = await self._take(
                keys=[keys.claim], args=[secrets.token_hex(8), self.claim_ttl_ms]
            )
        return Claim(keys, _text(holder), mine=bool(taken))

    async def acquire(self, flight_id: str) -> Claim | Record | None:
        """Lead (a :class:`Claim`), follow (the leader's :class:`Record`), or go alone (None)."""
        if not self.breaker.allow():
            return None
        keys = FlightKeys.of(self.prefix, flight_id)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                claim = await self._claim(keys)
            except _FAILURES as exc:
                self._failed("flight_claim", exc)
                return None  # Redis is down: nobody can coordinate, so do not wait for anybody
            self.breaker.succeeded()
            if claim.mine:
                return claim
            if time.monotonic() >= deadline:
                return None
            outcome = await self.wait(claim, deadline)
            if not isinstance(outcome, Lapsed):
                return outcome
            # Its leader gave up or died: take over, or wait for whoever did.

    async def wait(self, claim: Claim, deadline: float) -> Record | Lapsed | None:
        """The result of ``claim`` (another replica's), :class:`Lapsed` once that claim is no
        longer held and left no result, ``None`` at ``deadline`` or on a failure (go alone)."""
        keys = claim.keys
        op_timeout = self.op_timeout_s
        try:
            async with self.redis.pubsub() as pubsub:
                async with asyncio.timeout(op_timeout):
                    await pubsub.subscribe(keys.channel)
                while True:
                    async with asyncio.timeout(op_timeout), self.redis.pipeline() as pipe:
                        pipe.get(keys.claim).get(keys.result(claim.token))
                        holder, raw = await pipe.execute()
                    if raw is not None:
                        return _decoded(raw)
                    if holder is None or _text(holder) != claim.token:
                        return Lapsed()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=min(remaining, _POLL_S)
                    )
        except _FAILURES as exc:
            self._failed("flight_wait", exc)
            return None
        except _Garbage:
            self.metrics.redis_errors.labels("flight_decode").inc()  # not an outage: no breaker
            return None

    @contextlib.asynccontextmanager
    async def holding(self, claim: Claim) -> AsyncIterator[None]:
        """Keep ``claim`` alive while the leader works, so a long call is not taken over."""
        task = asyncio.create_task(self._keep_alive(claim), name="flight-claim-refresh")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_alive(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self.claim_ttl_ms / 3000)
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    await self._refresh(
                        keys=[claim.keys.claim], args=[claim.token, self.claim_ttl_ms]
                    )
            except _FAILURES as exc:
                raise_if_cancelled()
                self._failed("flight_refresh", exc)

    async def publish(self, claim: Claim, record: Record) -> None:
        """Store the result, drop the claim and wake the waiters, in one step."""
        keys = claim.keys
        try:
            async with asyncio.timeout(self.op_timeout_s * 4):
                await self._publish(
                    keys=[keys.claim, keys.result(claim.token)],
                    args=[claim.token, record.encode(), _RESULT_TTL_MS, keys.channel],
                )
        except _FAILURES as exc:
            self._failed("flight_publish", exc)

    async def release(self, claim: Claim) -> None:
        """Give the claim up without a result (the call was abandoned)."""
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await self._release(keys=[claim.keys.claim], args=[claim.token])
        except _FAILURES as exc:
            self._failed("flight_release", exc)
