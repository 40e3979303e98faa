"""Fixtures for tests that run the real command line."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.runtime.procs import ProxyProcess

Start = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy() -> Iterator[Start]:
    """Start ``llm-proxy ARGS`` processes; each is stopped (or killed) at the end."""
    started: list[ProxyProcess] = []

    def start(*args: str) -> ProxyProcess:
        proc = ProxyProcess(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
