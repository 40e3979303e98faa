"""A circuit breaker for optional Redis paths (cache, cross-replica single flight).

After a failure the path is skipped for ``cooldown_s``; the outage is logged at most once per
interval, not per request, and the recovery once.

A refused or broken connection opens the breaker at once. A *timeout* opens it only when
``timeouts_to_open`` operations in a row timed out: an overloaded event loop reads Redis's
replies late (at 1,000 connections the soak saw most reads past the 50 ms bound) while Redis is
fine, and some operations still succeed in between; opening on each timeout switched the cache
off for the whole run, just when it saved the most. A Redis that really stalls times every
operation out, and the breaker opens after a few.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Breaker"]

log = logging.getLogger(__name__)

_LOG_EVERY_S = 30.0


class Breaker:
    """Open after a failure for ``cooldown_s``; logs the outage at most once per interval."""

    def __init__(
        self,
        *,
        cooldown_s: float,
        name: str,
        fallback: str,
        timeouts_to_open: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.timeouts_to_open = timeouts_to_open
        self._timeouts_in_a_row = 0
        self.name = name
        self.fallback = fallback
        self._clock = clock
        self.open_until = 0.0
        self._last_log = -_LOG_EVERY_S
        self._quiet_failures = 0

    def allow(self) -> bool:
        return not self.open_until or self._clock() >= self.open_until

    @property
    def is_open(self) -> bool:
        return bool(self.open_until)

    def failed(self, op: str, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError) and not self.open_until:
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row < self.timeouts_to_open:
                return  # one slow answer: this operation is lost, the path stays on
        self._timeouts_in_a_row = 0
        now = self._clock()
        self.open_until = now + self.cooldown_s
        if now - self._last_log >= _LOG_EVERY_S:
            log.warning(
                "%s unavailable (%s on %s: %s); %s, retrying in %.1fs"
                " (%d more failures since the last report)",
                self.name,
                type(exc).__name__,
                op,
                exc,
                self.fallback,
                self.cooldown_s,
                self._quiet_failures,
            )
            self._last_log, self._quiet_failures = now, 0
        else:
            self._quiet_failures += 1

    def succeeded(self) -> None:
        self._timeouts_in_a_row = 0
        if self.open_until:
            self.open_until = 0.0
            log.warning("%s is back", self.name)
