"""A circuit breaker for optional Redis paths (cache, cross-replica single flight).

After a failure the path is skipped for ``cooldown_s``; the outage is logged at most once per
interval, not per request, and the recovery once.
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cooldown_s = cooldown_s
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
        if self.open_until:
            self.open_until = 0.0
            log.warning("%s is back", self.name)
