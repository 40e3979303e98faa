"""Proxies with the request log on (the shared fixture turns it off), written nowhere unless a
test collects it (:class:`tests.observe.helpers.Lines`) or restores the stderr sink."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.keys import OBSERVER
from tests.conftest import Proxy, ProxyFactory, deep_merge


@pytest.fixture
def make_proxy(make_proxy: ProxyFactory) -> Callable[..., Proxy]:
    def make(config: dict[str, Any] | None = None) -> Proxy:
        proxy = make_proxy(deep_merge({"server": {"access_log": True}}, config or {}))
        log = proxy.app[OBSERVER].log
        if log is not None:
            proxy.live.bg.call(lambda: setattr(log, "sink", lambda data: None))
        return proxy

    return make
