"""The Redis backend on a Redis Cluster (``redis.cluster: true``).

One cluster-enabled node owning every slot is a real cluster to the client and to the server:
the server still refuses any multi-key command whose keys fall in different slots (CROSSSLOT),
so these tests prove the backend never sends one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis

from proxy.cache.redis import RedisBackend
from proxy.config import CacheSettings
from tests.cache.conftest import make_redis
from tests.support.redis_server import free_port


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    exe = shutil.which("redis-server")
    assert exe is not None
    port, workdir = free_port(), tempfile.mkdtemp(prefix="llmproxy-cluster-")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"{workdir}/nodes.conf",
            # The bus port defaults to port + 10000, which may be taken or above 65535.
            "--cluster-port",
            str(free_port()),
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server (cluster mode) exited"
                assert time.monotonic() < deadline, "cluster node did not start"
                time.sleep(0.02)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "cluster did not become ok"
            time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_cluster_backend_get_set_clear(cluster_url: str) -> None:
    backend = make_redis(cluster_url, cluster=True, cache=CacheSettings(compress_min_bytes=16))
    assert isinstance(backend, RedisBackend)
    try:
        keys = [f"t_{s * 32}:{i:064x}" for s in "ab" for i in range(50)]
        for i, key in enumerate(keys):
            await backend.set(key, b"value %d" % i * 4, ttl_s=60)
        assert await backend.get(keys[7]) == b"value 7" * 4
        assert backend.problem() is None
        # Keys of one tenant land in many slots; clearing must still work (no CROSSSLOT).
        assert await backend.clear(scope="t_" + "a" * 32) == 50
        assert await backend.get(keys[7]) is None
        assert await backend.get(keys[77]) == b"value 77" * 4
        assert await backend.clear() == 50
        assert backend.problem() is None
    finally:
        await backend.close()
