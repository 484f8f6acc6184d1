"""Redis Cluster: topology and key-style checks at connect, routing across nodes.

Runs under ``--redis-cluster`` only (the session cluster of conftest).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
import redis.exceptions as rexc

from cal_redis import CacheConfig, CallableCache, ConfigurationError, User
from cal_redis.embedded import EmbeddedRedis
from cal_redis.keys import LAYOUT_KEY
from cal_redis.remote import map_redis_error
from waiting import until

pytestmark = pytest.mark.skipif(
    os.environ.get("CAL_REDIS_TEST_CLUSTER") != "1", reason="needs --redis-cluster"
)


def test_moved_keeps_its_name() -> None:
    err = map_redis_error(rexc.MovedError("8409 127.0.0.1:7001"), "HGET cal:users")
    assert "MOVED 8409 127.0.0.1:7001" in str(err) and "redis+cluster://" in str(err)


async def test_topology_and_key_style_follow_the_server(redis_url: str, redis_server: Any) -> None:
    node_url = f"redis://127.0.0.1:{redis_server.ports[0]}/0"
    async with await CallableCache.connect(node_url) as cache:  # cluster_enabled:1
        assert cache.remote.is_cluster and cache.keys.cluster
        await cache.set_user(User(id="u1", email="a@x.io"))
        assert (await cache.get_user_by_ident("a@x.io")).id == "u1"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="cluster_enabled:1"):
        await CallableCache.connect(node_url, config=CacheConfig(topology="standalone"))
    with pytest.raises(ConfigurationError, match="cluster=False"):
        await CallableCache.connect(redis_url, config=CacheConfig(cluster=False))


async def test_standalone_server_is_not_a_cluster() -> None:
    with EmbeddedRedis() as server, pytest.raises(ConfigurationError, match="not a Redis Cluster node"):
        await CallableCache.connect(server.url, config=CacheConfig(topology="cluster"))


async def test_key_style_mismatch_is_refused(redis_url: str, raw: redis.RedisCluster) -> None:
    raw.set(LAYOUT_KEY, "standalone")
    with pytest.raises(ConfigurationError, match="standalone key style"):
        await CallableCache.connect(redis_url)
    raw.delete(LAYOUT_KEY)
    raw.hset("cal:user:idents", "a@x.io", "u1")  # data in the standalone style, no marker
    with pytest.raises(ConfigurationError, match="cal:user:idents exists"):
        await CallableCache.connect(redis_url)


async def test_pipeline_spanning_nodes_keeps_order(redis_url: str) -> None:
    async with await CallableCache.connect(redis_url) as cache:
        keys = [f"cal:trunk:10.0.0.{i}" for i in range(30)]
        nodes = {cache.remote.node_of(k) for k in keys}
        assert len(nodes) == 3

        def build(pipe: Any) -> None:
            for i, key in enumerate(keys):
                pipe.set(key, str(i))
            for key in keys:
                pipe.get(key)

        replies = await cache.remote.pipeline("test", build)
        assert replies[30:] == [str(i).encode() for i in range(30)]


async def test_warm_invalidate_and_tools_on_the_cluster(redis_url: str, tmp_path: Any) -> None:
    from cal_redis import Region
    from cal_redis.backup import backup, restore

    async with await CallableCache.connect(redis_url) as a, \
            await CallableCache.connect(redis_url) as b:
        for i in range(30):
            await a.set_region(Region(id=f"r{i}", code=f"c{i}"))
            await a.set_user(User(id=f"u{i}", email=f"u{i}@x.io"))
        result = await b.warm(("regions",), users=[f"u{i}" for i in range(30)])
        assert result.namespaces["regions"].stored == 30 and result.namespaces["users"].stored == 30
        await a.invalidate("users", ["u1", "u2"])
        await until(lambda: "u1" not in b.local["users"] and "u2" not in b.local["users"])
        assert "u3" in b.local["users"]
        with pytest.raises(ConfigurationError, match="not yet on a Redis Cluster"):
            await backup(a.remote, str(tmp_path / "b.jsonl"))
        with pytest.raises(ConfigurationError, match="not yet on a Redis Cluster"):
            await restore(a.remote, str(tmp_path / "b.jsonl"))
