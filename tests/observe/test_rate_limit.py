"""Repeated warnings: at most one line per cause per 30 s, with the count of what was dropped."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.observe.logs import RATE_LIMIT_S, RateLimitFilter, configure_logging, resolve_format
from tests.core.test_cli import start, stop, wait_listening


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, list[str], Clock]]:
    """A logger whose records go through the filter to a list."""
    clock = Clock()
    out: list[str] = []

    class ToList(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(record.getMessage())

    handler = ToList()
    handler.addFilter(RateLimitFilter(clock=clock))
    logger = logging.getLogger("tests.observe.flood")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, out, clock
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_a_flood_is_one_line_per_interval_with_the_count(
    captured: tuple[logging.Logger, list[str], Clock],
) -> None:
    logger, out, clock = captured
    for _ in range(120):  # 4 a second for 30 s: the job worker while Redis is down
        logger.warning("job store unavailable; retrying in %ss", 0.5)
        clock.now += 0.25
    assert out == ["job store unavailable; retrying in 0.5s"]
    clock.now += 0.01  # 30 s after the first line
    logger.warning("job store unavailable; retrying in %ss", 0.5)
    assert out[1] == "job store unavailable; retrying in 0.5s (119 more like this in the last 30 s)"
    logger.warning("job store unavailable; retrying in %ss", 0.5)
    assert len(out) == 2


def test_causes_are_counted_apart_and_info_is_not_limited(
    captured: tuple[logging.Logger, list[str], Clock],
) -> None:
    logger, out, clock = captured
    for _ in range(3):
        logger.warning("redis down: %s", "ConnectionError")
        logger.error("upstream %s broke off", "fake")
        logger.info("started %d", 1)
    assert out == ["redis down: ConnectionError", "upstream fake broke off"] + ["started 1"] * 3
    clock.now += RATE_LIMIT_S
    logger.warning("redis down: %s", "TimeoutError")
    assert out[-1] == "redis down: TimeoutError (2 more like this in the last 30 s)"


@contextlib.contextmanager
def configured(stream: io.StringIO, **options: Any) -> Iterator[None]:
    """``configure_logging`` for the block; the root logger as it was after it."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(level="info", stream=stream, **options)
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("aiohttp.access").disabled = False


def test_configure_logging_installs_it_and_writes_json() -> None:
    stream = io.StringIO()
    with configured(stream, fmt="auto"):  # not a tty: JSON
        for _ in range(50):
            logging.getLogger("proxy.jobs.worker").warning("job store unavailable")
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["level"] == "warning" and line["logger"] == "proxy.jobs.worker"
    assert line["message"] == "job store unavailable"
    assert "pid" not in line


def test_a_workers_lines_name_its_process_in_both_formats() -> None:
    text, json_lines = io.StringIO(), io.StringIO()
    with configured(text, fmt="text", pid=True):
        logging.getLogger("proxy").info("listening")
    with configured(json_lines, fmt="json", pid=True):
        logging.getLogger("proxy").info("listening")
    assert text.getvalue().rstrip().endswith(f" INFO proxy [{os.getpid()}] listening")
    assert json.loads(json_lines.getvalue())["pid"] == os.getpid()


class ClosingServer:
    """A TCP port that accepts connections and closes them at once: a Redis that is down."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_the_job_worker_does_not_flood_the_log_while_redis_is_down(tmp_path: Path) -> None:
    """The real command line: the worker polls a dead Redis 20 times a second; the log gets one
    line per cause."""
    redis = ClosingServer()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\n"
        "jobs: {store: redis, poll_interval_s: 0.05}\n"
        "upstreams: [{name: fake, base_url: 'http://127.0.0.1:9/v1'}]\n"
    )
    proc = start("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    try:
        wait_listening(proc)
        deadline = time.monotonic() + 20
        while redis.accepted < 30:  # at least 30 failed polls (a bounded wait, not a sleep)
            assert time.monotonic() < deadline, f"only {redis.accepted} connections"
            time.sleep(0.02)
    finally:
        err = stop(proc)
        redis.close()
    about_the_store = [line for line in err.splitlines() if "job store" in line]
    assert 1 <= len(about_the_store) <= 2, err  # the worker's line and the store's
    assert all(json.loads(line)["level"] == "warning" for line in about_the_store)


def test_auto_format_is_text_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
