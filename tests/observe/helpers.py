"""Shared by the observability tests: the request log's lines, and traffic of every kind."""

from __future__ import annotations

import json
from typing import Any

from proxy.keys import OBSERVER
from tests.conftest import Proxy


class Lines:
    """Collects a proxy's request-log output (what it would write to stderr) as parsed lines."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.raw: list[bytes] = []
        log = proxy.app[OBSERVER].log
        assert log is not None
        self.log = log
        proxy.live.bg.call(lambda: setattr(log, "sink", self.raw.append))

    def text(self) -> str:
        """Everything written so far (after the pending lines are flushed)."""
        self.proxy.live.bg.call(self.log.flush)
        return b"".join(self.raw).decode()

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]
