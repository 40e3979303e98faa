"""Redis with AUTH (``requirepass``), an ACL user confined to the proxy's key prefix, and TLS
(``rediss://``): the cache, jobs and single flight across replicas all work over each, against a
real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.coalesce.helpers import CHAT, calls, set_state, wait_until
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.jobs.conftest import finished, http
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer, free_port, server_argv, wait_for_ping

PASSWORD = "redis-pass-7f3a9c"
ACL_USER = "llmproxy-app"
ACL_PASSWORD = "acl-pass-51be02"
PREFIX = "llmproxy"
#: What the proxy needs and no more: its own keys and channels, no admin or dangerous commands.
ACL_RULES = (
    "on",
    f">{ACL_PASSWORD}",
    "resetkeys",
    f"~{PREFIX}:*",
    f"~{{{PREFIX}:*",  # the job and batch keys' hash tag: {llmproxy:jobs}:...
    "resetchannels",
    f"&{PREFIX}:*",
    "-@all",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@scripting",
    "+@pubsub",
    "+@transaction",
    "+@connection",
    "-@dangerous",
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(directory: Path) -> None:
    """A CA, a server certificate it signs for 127.0.0.1, and a client certificate."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=llm-proxy test CA",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=llm-proxy",
        cwd=directory,
    )
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "client.crt", "-days", "2", cwd=directory)  # fmt: skip


class TlsRedis:
    """A redis-server that speaks only TLS (no plain port), with a password; ``mutual``: it
    wants a client certificate signed by its CA too."""

    def __init__(self, *, mutual: bool = False) -> None:
        self.mutual = mutual
        exe = shutil.which("redis-server")
        assert exe is not None
        self.dir = Path(tempfile.mkdtemp(prefix="llmproxy-tls-"))
        make_certs(self.dir)
        self.port = free_port()
        argv = server_argv(exe, 0, str(self.dir))
        self.proc = subprocess.Popen(
            [*argv, "--tls-port", str(self.port), "--tls-cert-file", str(self.dir / "server.crt"),
             "--tls-key-file", str(self.dir / "server.key"),
             "--tls-ca-cert-file", str(self.dir / "ca.crt"),
             "--tls-auth-clients", "yes" if mutual else "no",
             "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_ping(self.port, self.proc, **self.client_options()).close()

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.crt")

    def client_options(self) -> dict[str, Any]:
        options = {"password": PASSWORD, "ssl": True, "ssl_ca_certs": self.ca_file}
        if self.mutual:
            options.update(self.client_cert())
        return options

    def client_cert(self) -> dict[str, str]:
        return {
            "ssl_certfile": str(self.dir / "client.crt"),
            "ssl_keyfile": str(self.dir / "client.key"),
        }

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, **self.client_options())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    server = TlsRedis()
    yield server
    server.close()


def _config(url: str, **redis_settings: Any) -> dict[str, Any]:
    return {
        # A new TLS connection (a handshake) on a loaded 2-core machine may take a while.
        "redis": {"url": url, "key_prefix": PREFIX, "op_timeout_ms": 3000, **redis_settings},
        "cache": {"backend": "redis"},
        "jobs": {"store": "redis", "poll_interval_s": 0.05},
    }


async def _post(proxy: Proxy, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as session:
        async with session.post(f"{proxy.base_url}/chat/completions", json=body) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def redis_ok(proxy: Proxy) -> bool:
    """``/readyz`` finds nothing degraded (Redis answers)."""
    return http("GET", f"{proxy.url}/readyz", key=None).json()["degraded"] == {}


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


async def exercise(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, config: dict[str, Any]
) -> None:
    """Cache (miss then hit, from another replica), a job, and single flight across replicas."""
    a, b = make_proxy(config), make_proxy(config)
    assert redis_ok(a)

    status, body, headers = await _post(a, _chat("cached over redis"))
    assert (status, headers["X-Cache"]) == (200, "MISS")
    status, again, headers = await _post(b, _chat("cached over redis"))
    assert (status, headers["X-Cache"], again) == (200, "HIT", body)
    assert calls(fake, CHAT) == 1

    job = http("POST", f"{a.url}/v1/jobs", {"endpoint": CHAT, "body": _chat("a job")}).json()
    assert finished(b.url, job["id"])["status"] == "completed"  # b reads what a's worker stored
    assert calls(fake, CHAT) == 2

    set_state(bg, fake, latency_ms=1000)
    first = asyncio.create_task(_post(a, _chat("one flight")))
    await wait_until(lambda: fake.state.in_flight == 1)
    (s1, b1, _), (s2, b2, h2) = await asyncio.gather(first, _post(b, _chat("one flight")))
    assert (s1, s2, b1) == (200, 200, b2)
    assert h2["X-Coalesced"] == "2"
    assert calls(fake, CHAT) == 3


async def test_requirepass(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, auth_redis: RedisServer
) -> None:
    auth_redis.flush()
    url = f"redis://:{PASSWORD}@127.0.0.1:{auth_redis.port}/0"
    await exercise(make_proxy, fake, bg, _config(url))
    with auth_redis.client() as client:
        assert client.keys(f"{PREFIX}:cache:*")


def test_a_wrong_password_is_redis_down_not_an_error(
    make_proxy: ProxyFactory, fake: Fake, auth_redis: RedisServer
) -> None:
    """The cache fails open: requests still succeed, bypassing it; /readyz says why."""
    proxy = make_proxy(_config(f"redis://:wrong@127.0.0.1:{auth_redis.port}/0"))
    first = http("POST", f"{proxy.base_url}/chat/completions", _chat("no redis"))
    second = http("POST", f"{proxy.base_url}/chat/completions", _chat("no redis"))
    assert first.status == second.status == 200
    assert second.headers["X-Cache"] != "HIT"
    assert calls(fake, CHAT) == 2
    assert not redis_ok(proxy)


async def test_acl_user_confined_to_the_prefix(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, auth_redis: RedisServer
) -> None:
    auth_redis.flush()
    with auth_redis.client() as admin:
        admin.acl_deluser(ACL_USER)
        admin.execute_command("ACL", "SETUSER", ACL_USER, *ACL_RULES)
        admin.execute_command("ACL", "LOG", "RESET")
        url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{auth_redis.port}/0"
        await exercise(make_proxy, fake, bg, _config(url))
        # Nothing the proxy sent was refused: every command, key and channel was allowed.
        assert admin.execute_command("ACL", "LOG") == []
        assert admin.keys(f"{PREFIX}:cache:*")
        names = [k.decode() for k in admin.keys("*")]
        assert any(k.startswith(f"{{{PREFIX}:jobs}}") for k in names)
        assert all(k.startswith((f"{PREFIX}:", f"{{{PREFIX}:")) for k in names)


async def test_tls(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, tls_redis: TlsRedis
) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
    await exercise(make_proxy, fake, bg, _config(url, tls_ca_file=tls_redis.ca_file))
    with tls_redis.client() as client:
        assert client.keys(f"{PREFIX}:cache:*")


def test_tls_refuses_a_server_it_cannot_verify(
    make_proxy: ProxyFactory, fake: Fake, tls_redis: TlsRedis
) -> None:
    """Without the CA that signed the server's certificate, the proxy does not talk to it (and
    keeps serving, with the cache bypassed); ``tls_verify: false`` talks to it anyway."""
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0"
    strict = make_proxy(_config(url))
    assert not redis_ok(strict)
    assert http("POST", f"{strict.base_url}/chat/completions", _chat("x")).status == 200
    lax = make_proxy(_config(url, tls_verify=False))
    deadline = time.monotonic() + 10
    while not redis_ok(lax):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mutual_tls_redis() -> Iterator[TlsRedis]:
    server = TlsRedis(mutual=True)
    yield server
    server.close()


async def test_tls_with_a_client_certificate(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, mutual_tls_redis: TlsRedis
) -> None:
    """``tls_cert_file``/``tls_key_file`` for a server with ``tls-auth-clients yes``; without
    them the server refuses the proxy."""
    server = mutual_tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
    anonymous = make_proxy(_config(url, tls_ca_file=server.ca_file))
    assert not redis_ok(anonymous)
    cert = server.client_cert()
    config = _config(
        url,
        tls_ca_file=server.ca_file,
        tls_cert_file=cert["ssl_certfile"],
        tls_key_file=cert["ssl_keyfile"],
    )
    await exercise(make_proxy, fake, bg, config)
