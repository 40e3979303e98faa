"""Small helpers for the coalescing tests: waiting on conditions, reading metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.fake_upstream import Scripted
from proxy.keys import METRICS
from tests.conftest import Fake, Proxy
from tests.support.live import BackgroundLoop

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
CMPL = "/v1/completions"
EMB_MODEL = "text-embedding-3-small"
CMPL_MODEL = "gpt-3.5-turbo-instruct"


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (a bounded wait on an observable condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    value = proxy.app[METRICS].registry.get_sample_value(name, labels or None)
    return value or 0.0


def set_state(bg: BackgroundLoop, fake: Fake, **values: Any) -> None:
    def apply() -> None:
        for name, value in values.items():
            setattr(fake.state, name, value)

    bg.call(apply)


def open_gate(bg: BackgroundLoop, fake: Fake) -> asyncio.Event:
    def make() -> asyncio.Event:
        fake.state.stream_gate = asyncio.Event()
        return fake.state.stream_gate

    return bg.call(make)


def release(bg: BackgroundLoop, gate: asyncio.Event) -> None:
    bg.call(gate.set)


def script(bg: BackgroundLoop, fake: Fake, *replies: Scripted) -> None:
    bg.call(lambda: fake.state.script.extend(replies))


def calls(fake: Fake, path: str) -> int:
    return fake.state.calls[path]
