"""The circuit breaker of the optional Redis paths: what opens it, and what does not."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock) -> Breaker:
    return Breaker(cooldown_s=5, name="test redis", fallback="skipping it", clock=clock)


def test_a_refused_connection_opens_it_at_once() -> None:
    breaker = _breaker(Clock())
    breaker.failed("get", RedisConnectionError("refused"))
    assert breaker.is_open and not breaker.allow()


def test_timeouts_open_it_only_in_a_row() -> None:
    """An overloaded event loop reads some replies late while Redis is fine: a lone timeout
    loses that operation, not the whole path; a stalled Redis times every operation out."""
    clock = Clock()
    breaker = _breaker(clock)
    breaker.failed("get", TimeoutError())
    breaker.failed("get", TimeoutError())
    assert not breaker.is_open and breaker.allow()
    breaker.succeeded()  # one answer in time: the count starts again
    breaker.failed("get", TimeoutError())
    breaker.failed("get", TimeoutError())
    assert not breaker.is_open
    breaker.failed("get", TimeoutError())
    assert breaker.is_open and not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # cooldown over: try again
    breaker.succeeded()
    assert not breaker.is_open
