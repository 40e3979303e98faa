"""A real ``llm-proxy`` process for runtime tests: its log lines, waited on with deadlines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support import http

T = TypeVar("T")

#: Generous for a loaded 2-core machine; every wait polls a condition and ends when it holds.
DEADLINE_S = 30.0


def wait_until(check: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
    """Poll ``check`` until it returns something other than ``None``/``False``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


class ProxyProcess:
    """``python -m proxy ARGS`` (or ``command``) with stderr collected line by line in a thread."""

    def __init__(
        self, *args: str, command: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "proxy", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its workers too can be stopped as one group
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._lock:
            return [m for m in map(regex.search, self.lines) if m]

    def wait_log(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """Until ``pattern`` has matched ``count`` log lines (the process must stay up)."""

        def seen() -> list[re.Match[str]] | None:
            found = self.matches(pattern)
            if len(found) >= count:
                return found
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            return None

        return wait_until(seen, f"{pattern!r} x{count} in the log")

    def wait_ready(self, port: int) -> None:
        def ok() -> bool:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            try:
                return http.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_until(ok, "the proxy to answer /healthz")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Test teardown: whatever happened, leave no process behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
