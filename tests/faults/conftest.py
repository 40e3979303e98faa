"""Fixtures for the fault-injection suite: a TCP fault proxy in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Fake, Proxy, ProxyFactory
from tests.support.faultproxy import FaultProxy
from tests.support.live import BackgroundLoop

#: Short enough to test, long enough for a loaded 2-core machine to answer a healthy request.
TIMEOUT_S = 1.0


@pytest.fixture
def upstream_faults(bg: BackgroundLoop, fake: Fake) -> Iterator[FaultProxy]:
    """A fault proxy between the proxy and the fake upstream."""
    fp = FaultProxy(bg, fake.live.port).start()
    yield fp
    fp.close()


@pytest.fixture
def faulty_proxy(make_proxy: ProxyFactory, upstream_faults: FaultProxy) -> Callable[..., Proxy]:
    """A proxy (cache on, memory) whose only upstream is reached through the fault proxy."""

    def make(**config: Any) -> Proxy:
        upstream = {
            "name": "fake",
            "base_url": f"{upstream_faults.url}/v1",
            "models": ["*"],
            "connect_timeout_s": TIMEOUT_S,
            "first_byte_timeout_s": TIMEOUT_S,
        }
        return make_proxy({"upstreams": [upstream], **config})

    return make
