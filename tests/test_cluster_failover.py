"""Failovers of a Redis Cluster under concurrent reads and writes from two caches.

Runs under ``--redis-cluster`` only, on a 3+3 cluster of its own whose node timeout is
2 s (the session cluster's is long, so a loaded machine never fails over by accident).
Each test prints its figures: time to the promotion, to reads OK after it, stale reads
after quiescence, acknowledged writes the failover lost, errors meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, User
from cal_redis.embedded import EmbeddedCluster, EmbeddedRedis, command

pytestmark = pytest.mark.skipif(
    os.environ.get("CAL_REDIS_TEST_CLUSTER") != "1", reason="needs --redis-cluster"
)


@pytest.fixture(scope="module")
def fast_cluster() -> Any:
    """A cluster of its own that fails over 2 s after a master dies."""
    with EmbeddedCluster(node_timeout=2000) as cluster:
        yield cluster


def _master_of(cluster: EmbeddedCluster, key: str) -> EmbeddedRedis:
    client = redis.RedisCluster(host=cluster.host, port=cluster.masters()[0].port)
    try:
        port = client.get_node_from_key(key).port
    finally:
        client.close()
    return next(n for n in cluster.nodes if n.port == port)


def _replica_of(cluster: EmbeddedCluster, master: EmbeddedRedis) -> EmbeddedRedis:
    return next(
        n for n in cluster.nodes if n.running and n is not master
        and cluster.role(n) == "slave"
        and f"master_port:{master.port}" in str(command(cluster.host, n.port, "INFO",
                                                        "replication")))


async def _subscribed_to(cluster: EmbeddedCluster, node: EmbeddedRedis,
                         cfg: CacheConfig) -> CallableCache:
    """A cache whose event subscriber sits on ``node`` (caches start on a random node)."""
    landed: dict[str | None, int] = {}
    for _ in range(200):
        cache = await CallableCache.connect(cluster.url, config=cfg)
        name = cache._sync._pool.node
        if name == f"{cluster.host}:{node.port}":
            return cache
        landed[name] = landed.get(name, 0) + 1
        topology = cache.remote.topology.nodes
        await cache.close()
    raise AssertionError(f"no subscriber landed on {node.port} in 200 caches: {landed}; "
                         f"the last one's nodes: {topology}")


async def _failover_under_load(cluster: EmbeddedCluster, kill: bool) -> dict[str, Any]:
    """See :func:`_failover_run`; whatever happens, its tasks end and its caches close."""
    opened: list[CallableCache] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        return await _failover_run(cluster, kill, opened, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cache in opened:
            await cache.close()


async def _failover_run(cluster: EmbeddedCluster, kill: bool, opened: list[CallableCache],
                        tasks: list[asyncio.Task[None]]) -> dict[str, Any]:
    """Two caches write (disjoint users) and read; a third, without L1, reads Redis.
    Then the master of ``cal:users`` fails over (SIGKILL, or CLUSTER FAILOVER on its
    replica); one cache's subscriber sits on that master. Figures after quiescence."""
    cluster.wait_healthy()
    cluster.flushall()
    cfg = CacheConfig(heartbeat_interval=0.25, cluster_retry_timeout=1.0)
    victim = _master_of(cluster, "cal:users")
    replica = _replica_of(cluster, victim)
    a = await CallableCache.connect(cluster.url, config=cfg)
    opened.append(a)
    b = await _subscribed_to(cluster, victim, cfg)
    opened.append(b)
    probe = await CallableCache.connect(cluster.url, config=replace(cfg, local_cache=False))
    opened.append(probe)
    ids = [f"u{i}" for i in range(50)]
    acked: dict[str, str] = {}
    errors: list[str] = []
    stop = asyncio.Event()
    reads_ok: list[float] = []
    promoted: list[float] = []

    async def writer(cache: CallableCache, tag: str, mine: list[str]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            uid = mine[n % len(mine)]  # one writer per id: its last ack is the truth
            try:
                await cache.set_user(User(id=uid, name=f"{tag}{n}"))
                acked[uid] = f"{tag}{n}"
            except Exception as err:
                errors.append(type(err).__name__)
                await asyncio.sleep(0.01)

    async def reader(cache: CallableCache) -> None:
        while not stop.is_set():
            try:
                await cache.get_users_batch(ids[:10])
                if cache is probe and promoted and not reads_ok:
                    reads_ok.append(time.monotonic())
            except Exception as err:
                errors.append(type(err).__name__)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # L1 hits complete without yielding to the loop

    for uid in ids:
        await a.set_user(User(id=uid, name="v0"))
    tasks += [asyncio.create_task(c) for c in (
        writer(a, "a", ids[0::2]), writer(b, "b", ids[1::2]),
        reader(a), reader(b), reader(probe))]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    if kill:
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
    else:
        command(cluster.host, replica.port, "CLUSTER", "FAILOVER")
    # Poll for the three moments: the replica promoted, a read of Redis OK after it,
    # both subscriptions confirmed (B's again, after a kill of the node it sat on).
    marks: dict[str, float] = {}
    deadline = t0 + 20
    attempts, retry_at = 1, t0 + 6
    while len(marks) < 3 and time.monotonic() < deadline:
        now = time.monotonic()
        if "promoted" not in marks and cluster.role(replica) == "master":
            marks["promoted"] = now
            promoted.append(now)
        if reads_ok and "reads" not in marks:
            marks["reads"] = reads_ok[0]
        if "sync" not in marks and a.sync_state.state == b.sync_state.state == "connected" \
                and (not kill or b.sync_state.reconnects >= 1):
            marks["sync"] = now
        await asyncio.sleep(0.01)
        if not kill and "promoted" not in marks and now > retry_at:
            # A manual failover that did not complete within its 5 s timeout is
            # abandoned by Redis; an operator asks again.
            attempts += 1
            command(cluster.host, replica.port, "CLUSTER", "FAILOVER")
            retry_at = now + 6
    assert len(marks) == 3, f"not reached within 20 s: {marks}"
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(3 * cfg.heartbeat_interval)  # quiescence: the watch read the new map
    truth = redis.RedisCluster(host=cluster.host, port=replica.port)
    stale = lost = 0
    for uid in ids:
        raw = truth.hget("cal:users", uid)
        stored = None if raw is None else json.loads(raw)["name"]
        for cache in (a, b):
            got = await cache.get_user_by_id(uid)
            stale += (got.name if got else None) != stored
        lost += stored != acked.get(uid)
    truth.close()
    figures = {
        "promotion_s": round(marks["promoted"] - t0, 2),
        "failover_requests": attempts if not kill else 0,
        "reads_ok_after_promotion_s": round(marks["reads"] - marks["promoted"], 2),
        "sync_ok_after_fault_s": round(marks["sync"] - t0, 2),
        "stale_reads": stale,
        "lost_acknowledged_writes": lost,
        "errors_during_failover": len(errors),
        "topology_flushes": (a.sync_state.topology_flushes, b.sync_state.topology_flushes),
        "reconnects": (a.sync_state.reconnects, b.sync_state.reconnects),
    }
    return figures


async def test_routine_failover(fast_cluster: EmbeddedCluster, capsys: Any) -> None:
    figures = await _failover_under_load(fast_cluster, kill=False)
    with capsys.disabled():
        print(f"\n[cluster] CLUSTER FAILOVER under load: {figures}")
    assert figures["stale_reads"] == 0
    assert figures["lost_acknowledged_writes"] == 0  # a coordinated failover loses nothing
    assert all(n >= 1 for n in figures["topology_flushes"])  # both saw the new epoch


async def test_master_killed_under_load(fast_cluster: EmbeddedCluster, capsys: Any) -> None:
    figures = await _failover_under_load(fast_cluster, kill=True)
    with capsys.disabled():
        print(f"\n[cluster] SIGKILL of the cal:users master under load: {figures}")
    assert figures["stale_reads"] == 0
    assert figures["reconnects"][1] >= 1  # B's subscriber was on the dead master: it moved
    assert all(n >= 1 for n in figures["topology_flushes"])
