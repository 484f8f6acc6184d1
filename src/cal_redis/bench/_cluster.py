"""The cluster section of ``python -m cal_redis bench --cluster``: our cache on a Redis
Cluster beside redis-py's ``RedisCluster`` doing the same work, in the same run.

Rows: an L2 hit (``get_user_by_id`` with the key dropped from L1 first, against
``RedisCluster.hget`` + decode), ``get_users_batch(100)`` (against one ``HMGET`` +
decode), ``set_user`` (against one ``EVAL`` that writes the user and its ident and
publishes the event: the same round trip, without our compare-and-set), and event
propagation (a write on one cache until another cache's L1 holds it, against a raw
``PUBLISH`` on the users' master until a raw subscriber on another node gets it).
The sides alternate round by round as in every scenario (:func:`._runner.interleave`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from time import perf_counter
from typing import Any

import msgspec

from ..cache import CallableCache
from ..models import User
from ..remote.baseline import raw_client, raw_cluster
from ._scenarios import BENCH_CONFIG, USER_HASH, Row, Scenario, Side, make_user, seed_users

__all__ = ("CLUSTER_USERS", "cluster_scenarios", "cluster_propagation")

#: Users seeded for the cluster rows.
CLUSTER_USERS = 2000

#: The baseline of ``set_user``: the write, its ident and the event in one script.
_SET_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


def stock_cluster(url: str) -> Any:
    """redis-py's ``RedisCluster`` on the nodes of a ``redis+cluster://`` URL."""
    host, _, port = url.split("://", 1)[1].split(",", 1)[0].rpartition(":")
    return raw_cluster(host, int(port), protocol=BENCH_CONFIG.protocol)


async def cluster_scenarios(cache: CallableCache, stock: Any) -> list[Scenario]:
    """The cluster rows' scenarios; ``cache`` is connected to the cluster ``stock`` is."""
    ids = await seed_users(cache, CLUSTER_USERS)
    l1 = cache.local["users"]
    dec = msgspec.json.Decoder(User).decode
    keys = cache.keys
    order = [ids[(i * 7919) % len(ids)] for i in range(len(ids))]
    pos = [0]

    def nxt() -> str:
        pos[0] = (pos[0] + 1) % len(order)
        return order[pos[0]]

    async def ours_l2(n: int) -> list[float]:
        out = []
        for _ in range(n):
            k = nxt()
            l1.invalidate(k)  # not timed
            t0 = perf_counter()
            await cache.get_user_by_id(k)
            out.append(perf_counter() - t0)
        return out

    async def stock_l2(n: int) -> list[float]:
        out = []
        for _ in range(n):
            k = nxt()
            t0 = perf_counter()
            dec(await stock.hget(USER_HASH, k))
            out.append(perf_counter() - t0)
        return out

    windows = [ids[i : i + 100] for i in range(0, len(ids) - 99, 100)]

    async def ours_batch(n: int) -> list[float]:
        out = []
        for i in range(n):
            w = windows[i % len(windows)]
            l1.invalidate_all()  # not timed
            t0 = perf_counter()
            await cache.get_users_batch(w)
            out.append(perf_counter() - t0)
        return out

    async def stock_batch(n: int) -> list[float]:
        out = []
        for i in range(n):
            w = windows[i % len(windows)]
            t0 = perf_counter()
            [dec(r) for r in await stock.hmget(USER_HASH, w)]
            out.append(perf_counter() - t0)
        return out

    serial = [0]

    async def ours_set(n: int) -> list[float]:
        out = []
        for _ in range(n):
            serial[0] += 1
            user = msgspec.structs.replace(make_user(serial[0] % len(ids)), name=f"n{serial[0]}")
            t0 = perf_counter()
            await cache.set_user(user)
            out.append(perf_counter() - t0)
        return out

    async def stock_set(n: int) -> list[float]:
        out = []
        for _ in range(n):
            serial[0] += 1
            user = msgspec.structs.replace(make_user(serial[0] % len(ids)), name=f"n{serial[0]}")
            t0 = perf_counter()
            data = msgspec.json.encode(user)
            event = msgspec.json.encode({"type": "UserUpdate", "id": user.id, "data": user})
            await stock.eval(_SET_LUA, 2, USER_HASH, keys.USER_IDENTS, user.id, data,
                             user.email, keys.EVENTS, event)
            out.append(perf_counter() - t0)
        return out

    l2_sides: dict[str, Side] = {"ours": ours_l2, "stock": stock_l2}
    batch_sides: dict[str, Side] = {"ours": ours_batch, "stock": stock_batch}
    set_sides: dict[str, Side] = {"ours": ours_set, "stock": stock_set}
    return [
        Scenario("cluster: L1 miss, L2 hit", l2_sides, [
            Row("cl_l2_hit", "cluster: L1 miss, L2 hit: get_user_by_id", "ours", "stock",
                "RedisCluster HGET + msgspec decode", 1.5)], (20, 60), 100),
        Scenario("cluster: get_users_batch(100)", batch_sides, [
            Row("cl_batch100", "cluster: get_users_batch(100), all L2", "ours", "stock",
                "RedisCluster HMGET of 100 + msgspec decode per item", 1.5, stat="min")],
            (20, 60), 20),
        Scenario("cluster: set_user", set_sides, [
            Row("cl_set_user", "cluster: set_user", "ours", "stock",
                "RedisCluster EVAL: HSET user + HSET ident + PUBLISH (no compare-and-set)",
                2.0)], (20, 60), 50),
    ]


async def cluster_propagation(url: str, stock: Any, events: int) -> dict[str, list[float]]:
    """Seconds from a write's call to another cache's L1 holding it (``ours``), and from
    a raw ``PUBLISH`` on the users' master to a raw subscriber on another node
    (``raw``), alternating, ``events`` samples each."""
    a = await CallableCache.connect(url, config=replace(BENCH_CONFIG, sync=False))
    b = await CallableCache.connect(url, config=BENCH_CONFIG)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[float]] = []

    def done() -> None:
        if pending and not pending[0].done():
            pending[0].set_result(time.perf_counter())

    b.add_event_handler(lambda e: done() if e.id == "prop-u1" else None)
    master = stock.get_node_from_key(USER_HASH)
    other = next(n for n in stock.get_primaries() if n.name != master.name)
    pub = raw_client(host=master.host, port=master.port)
    sub_client = raw_client(host=other.host, port=other.port)
    pubsub = sub_client.pubsub()
    await pubsub.subscribe("cal:bench:raw")
    while (await pubsub.get_message(timeout=1.0)) is None:
        pass

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                done()

    task = loop.create_task(listen())
    out: dict[str, list[float]] = {"ours": [], "raw": []}
    try:
        user = User(id="prop-u1", email="prop@x.example")
        await a.set_user(user)
        for i in range(events):
            for side in ("ours", "raw") if i % 2 == 0 else ("raw", "ours"):
                pending[:] = [loop.create_future()]
                t0 = time.perf_counter()
                if side == "ours":
                    await a.set_user(msgspec.structs.replace(user, name=f"p{i}"))
                else:
                    await pub.publish("cal:bench:raw", b"x" * 200)
                t1 = await asyncio.wait_for(pending[0], 5)
                out[side].append(t1 - t0)
    finally:
        task.cancel()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sub_client.aclose()
        await pub.aclose()
        await a.close()
        await b.close()
    return out
