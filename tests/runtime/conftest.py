"""Fixtures for tests that run the real command line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config
from proxy.resources import Shared
from proxy.runtime import Runtime
from tests.runtime.procs import ProxyProcess, write_config
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp

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


AUTH = {"Authorization": "Bearer sk-client-0123456789"}


class Served:
    def __init__(self, bg: BackgroundLoop, path: Path) -> None:
        self.bg = bg
        self.path = path
        self.shared = Shared()
        self.runtime = Runtime(load_config(path, env={}), config_path=path, shared=self.shared)
        self.live = LiveApp(bg, self.runtime.shell()).start()

    def post(self, path: str, body: dict[str, Any]) -> http.Raw:
        return http.post(f"{self.live.url}{path}", body, headers=AUTH)

    def reload(self, config: dict[str, Any]) -> None:
        write_config(self.path, config)

        async def reload() -> None:
            self.runtime.reload()
            await self.runtime.wait_reloaded()

        self.bg.run(reload())


@pytest.fixture
def served(bg: BackgroundLoop, tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(config: dict[str, Any]) -> Served:
        s = Served(bg, write_config(tmp_path / "c.yaml", config))
        started.append(s)
        return s

    yield start
    for s in started:
        s.live.stop()
