"""A real ``redis-server`` started by the suite: free loopback port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_argv(exe: str, port: int, directory: str) -> list[str]:
    """A loopback redis-server that keeps nothing on disk."""
    return [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
    ]


def wait_for_ping(
    port: int,
    proc: subprocess.Popen[bytes],
    timeout_s: float = 10,
    **options: Any,
) -> redis.Redis:
    """A client of the redis-server ``proc`` once it answers PING; ``options`` go to the client
    (a password, TLS)."""
    # A server still loading accepts connections before it answers: bound the reply too, and
    # retry here on the deadline rather than inside the client.
    client = redis.Redis(
        port=port,
        socket_connect_timeout=0.2,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        **options,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline or proc.poll() is not None:
                client.close()
                raise RuntimeError(f"redis-server on port {port} did not start") from None
            time.sleep(0.02)


class RedisServer:
    """A redis-server process the tests may kill and restart (same port)."""

    def __init__(self, *extra_args: str, password: str | None = None) -> None:
        """``extra_args`` go to every start (e.g. ``--appendonly yes`` for a restart test);
        ``password``: the server's ``requirepass``, used by this object's own clients."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH; .ci/run installs it")
        self.exe = exe
        self.extra_args = extra_args
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llmproxy-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = password
        if password is not None:
            self.extra_args = (*extra_args, "--requirepass", password)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *server_argv(self.exe, self.port, self.dir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_ping(self.port, self.proc, password=self.password).close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        """Kill the server for good and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flush(self) -> None:
        client = redis.Redis(port=self.port, password=self.password)
        client.flushall()
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)


class RedisClusterNode:
    """One cluster-enabled redis-server owning every slot: a real Cluster to client and server
    (the server refuses any multi-key command whose keys fall in different slots)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH; .ci/run installs it")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llmproxy-cluster-")
        self.proc = subprocess.Popen(
            [
                *server_argv(exe, self.port, self.dir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"{self.dir}/nodes.conf",
                # The bus port defaults to port + 10000, which may be taken or above 65535.
                "--cluster-port",
                str(free_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = wait_for_ping(self.port, self.proc)
        deadline = time.monotonic() + 10
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not become ok")
            time.sleep(0.02)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
