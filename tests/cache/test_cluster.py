"""The Redis backend on a Redis Cluster (``redis.cluster: true``).

One cluster-enabled node owning every slot is a real cluster to the client and to the server:
the server still refuses any multi-key command whose keys fall in different slots (CROSSSLOT),
so these tests prove the backend never sends one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proxy.cache.redis import RedisBackend
from proxy.config import CacheSettings
from tests.cache.conftest import make_redis
from tests.support.redis_server import RedisClusterNode


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    node = RedisClusterNode()
    yield node.url
    node.stop()


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
