"""The real command line: listening, access log, bind errors, and the open-relay warning."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import __version__
from tests.conftest import Fake
from tests.support import http

LISTENING = re.compile(r"listening on http://([^\s]+):(\d+)")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_listening(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """The port from the proxy's start line, and the log lines before it."""
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:  # ends if the process exits (bounded by the test timeout)
        lines.append(line)
        match = LISTENING.search(line)
        if match:
            return int(match.group(2)), lines
    raise AssertionError(f"proxy did not start: {''.join(lines)}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
def config(tmp_path: Path, fake: Fake) -> Iterator[Path]:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstreams:\n  - name: fake\n    base_url: {fake.url}\n")
    yield path


def test_port_zero_picks_a_free_port(config: Path) -> None:
    proc = start("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    try:
        port, _ = wait_listening(proc)
        assert port not in (0, 8080)
        assert http.get(f"http://127.0.0.1:{port}/healthz").status == 200
    finally:
        stop(proc)


@pytest.mark.parametrize("enabled", [True, False])
def test_server_access_log_is_honoured(tmp_path: Path, fake: Fake, enabled: bool) -> None:
    """``server.access_log`` switches the request log (JSON on a pipe), not aiohttp's."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"server:\n  access_log: {str(enabled).lower()}\n"
        f"upstreams:\n  - name: fake\n    base_url: {fake.url}\n"
    )
    proc = start("--config", str(path), "--host", "127.0.0.1", "--port", "0")
    try:
        port, _ = wait_listening(proc)
        assert http.get(f"http://127.0.0.1:{port}/v1/models?api_key=sk-in-query").status == 200
    finally:
        err = stop(proc)
    assert "aiohttp.access" not in err and "sk-in-query" not in err, err
    logged = [json.loads(line) for line in err.splitlines() if '"request_id"' in line]
    assert bool(logged) is enabled, err
    if enabled:
        [line] = logged
        assert (line["method"], line["route"], line["status"]) == ("GET", "/v1/models", 200)
        assert line["query"] == "api_key="


def test_a_port_in_use_is_one_line_and_exit_2(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start("--config", str(config), "--host", "127.0.0.1", "--port", str(port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert f"llm-proxy: cannot listen on 127.0.0.1:{port}: " in err
    assert [line for line in err.splitlines() if line.startswith("llm-proxy:")] == [
        err.splitlines()[-1]
    ]


def test_lending_the_upstream_key_off_loopback_warns(tmp_path: Path, fake: Fake) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"upstreams:\n  - name: paid\n    base_url: {fake.url}\n    api_key: sk-upstream-key\n"
        "auth:\n  lend_upstream_key: true\n"
    )
    # 192.0.2.1 (TEST-NET-1) is never local: the warning comes, then the bind fails cleanly.
    proc = start("--config", str(path), "--host", "192.0.2.1", "--port", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "cannot listen on 192.0.2.1:0" in err
    warning = [line for line in err.splitlines() if "warning" in line.lower() and "'paid'" in line]
    assert len(warning) == 1 and "auth.mode: keys" in warning[0], err
    assert "can spend that key" in warning[0] and "sk-upstream-key" not in err
    # On loopback the same config is quiet.
    proc = start("--config", str(path), "--host", "127.0.0.1", "--port", "0")
    try:
        _, before = wait_listening(proc)
    finally:
        err = stop(proc)
    assert "can spend" not in "".join(before) + err


def test_keyless_callers_off_loopback_are_refused_so_no_warning(tmp_path: Path, fake: Fake) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"upstreams:\n  - name: paid\n    base_url: {fake.url}\n    api_key: sk-upstream-key\n"
    )
    proc = start("--config", str(path), "--host", "192.0.2.1", "--port", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "cannot listen on 192.0.2.1:0" in err, err
    assert "can spend" not in err
    assert "auth.lend_upstream_key: false" in err and "sk-upstream-key" not in err


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_a_port_outside_the_range_is_refused(config: Path, port: str) -> None:
    proc = start("--config", str(config), "--host", "127.0.0.1", "--port", port)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert f"argument --port: {port} is outside 0-65535" in err and "Traceback" not in err


def test_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and version.stdout.strip() == f"llm-proxy {__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0 and "check-config PATH" in helped.stdout
