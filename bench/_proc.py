"""Child processes for the harnesses: a free loopback port, waiting until a child answers HTTP,
stopping a child's process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
#: Loopback only: proxies named in the environment must not see the harness's requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(
    url: str, proc: subprocess.Popen[bytes], *, timeout_s: float = 60, log: Path | None = None
) -> None:
    """Until ``url`` answers 200; fail early, with the tail of ``log``, if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}\n{tail}")
        with contextlib.suppress(OSError):
            with _OPENER.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"not ready at {url}")


def stop_group(proc: subprocess.Popen[bytes], *, grace_s: float = 10) -> None:
    """SIGTERM the child's process group (it leads its own session), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``
    (a supervisor and its workers: the harness starts each child in a session of its own)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # After the command: state, ppid, pgrp, ..., utime (12th), stime (13th).
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
