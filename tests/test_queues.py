"""Queues (sorted sets) and queue metadata over a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, QueueMeta, ValidationError
from cal_redis import TimeoutError as CalTimeoutError
from cal_redis.models import now_ms
from keyspace import K
from redis_stats import assert_rejected_before_io, pause

A = "acc1"
Q = (K.account(A) + "queue:support")
META = (K.account(A) + "queues:meta")


async def test_fifo_and_priority(cache: CallableCache, raw: redis.Redis) -> None:
    before = now_ms()
    s1 = await cache.queue_add(A, "support", "call-1")
    await asyncio.sleep(0.002)
    s2 = await cache.queue_add(A, "support", "call-2")
    assert before <= s1 <= s2 <= now_ms()
    assert await cache.queue_add(A, "support", "vip", priority=1) == 1.0
    assert raw.zscore(Q, "call-1") == s1
    assert await cache.queue_len(A, "support") == 3
    assert await cache.queue_peek(A, "support") == [("vip", 1.0)]
    assert await cache.queue_peek(A, "support", n=10) == [("vip", 1.0), ("call-1", s1),
                                                          ("call-2", s2)]
    assert await cache.queue_position(A, "support", "call-2") == 2
    assert await cache.queue_position(A, "support", "nope") is None
    assert [await cache.queue_pop(A, "support") for _ in range(4)] == ["vip", "call-1",
                                                                       "call-2", None]
    assert await cache.queue_len(A, "support") == 0


async def test_re_add_keeps_fifo_place_and_reprioritises(cache: CallableCache) -> None:
    s1 = await cache.queue_add(A, "support", "call-1")
    await asyncio.sleep(0.002)
    assert await cache.queue_add(A, "support", "call-1") == s1  # ZADD NX: keeps its place
    assert await cache.queue_add(A, "support", "call-1", priority=-5.5) == -5.5
    assert await cache.queue_add(A, "support", "call-1", priority=7) == 7.0


async def test_remove(cache: CallableCache) -> None:
    await cache.queue_add(A, "support", "a", priority=1)
    await cache.queue_add(A, "support", "b", priority=2)
    assert await cache.queue_remove(A, "support", "a") is True
    assert await cache.queue_remove(A, "support", "a") is False
    assert await cache.queue_position(A, "support", "b") == 0


async def test_empty_queue(cache: CallableCache) -> None:
    assert await cache.queue_pop(A, "never") is None
    assert await cache.queue_peek(A, "never", 3) == []
    assert await cache.queue_len(A, "never") == 0
    assert await cache.queue_remove(A, "never", "x") is False


async def test_blocking_pop(cache: CallableCache, make_cache: Any) -> None:
    t0 = time.monotonic()
    assert await cache.queue_pop_blocking(A, "support", 0.1) is None
    assert 0.09 <= time.monotonic() - t0 < 1.5
    await cache.queue_add(A, "support", "ready", priority=1)
    assert await cache.queue_pop_blocking(A, "support", 1) == "ready"
    # an item pushed while waiting is delivered; another cache pushes it
    other = await make_cache()

    async def push_later() -> None:
        await asyncio.sleep(0.05)
        await other.queue_add(A, "support", "late")

    pusher = asyncio.create_task(push_later())
    assert await cache.queue_pop_blocking(A, "support", 2) == "late"
    await pusher


async def test_blocking_pop_outlives_socket_timeout(make_cache: Any) -> None:
    # The wait (0.6 s) is longer than the socket timeout (0.25 s); the reply is then
    # awaited wait + socket timeout, a margin a loaded 2-core machine keeps.
    cache = await make_cache(CacheConfig(socket_timeout=0.25))
    t0 = time.monotonic()
    assert await cache.queue_pop_blocking(A, "support", 0.6) is None
    assert time.monotonic() - t0 >= 0.59
    # the pool still works afterwards
    await cache.queue_add(A, "support", "x")
    assert await cache.queue_pop(A, "support") == "x"


async def test_blocking_pop_gives_up_on_a_silent_server(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(CacheConfig(socket_timeout=0.1))
    # A pooled connection to the queue's node, made before the pause: a connection made
    # during it would time out in its handshake after socket_timeout alone, 0.1 s.
    assert await cache.queue_pop_blocking(A, "support", 0.01) is None
    pause(raw, 1000)  # the server holds every client's commands
    t0 = time.monotonic()
    with pytest.raises(CalTimeoutError):
        await cache.queue_pop_blocking(A, "support", 0.1)
    # wait + socket timeout is 0.2 s: given up well before the pause ends
    assert 0.19 <= time.monotonic() - t0 < 0.9
    await asyncio.sleep(max(0.0, t0 + 1.05 - time.monotonic()))
    await cache.queue_add(A, "support", "x")
    assert await cache.queue_pop_blocking(A, "support", 1) == "x"


async def test_cancelled_blocking_pop_releases_connection(cache: CallableCache) -> None:
    task = asyncio.create_task(cache.queue_pop_blocking(A, "support", 5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await cache.queue_add(A, "support", "after")
    assert await cache.queue_pop_blocking(A, "support", 1) == "after"
    assert await cache.queue_len(A, "support") == 0


async def test_concurrent_poppers_deliver_each_item_once(make_cache: Any, raw: redis.Redis) -> None:
    caches = [await make_cache() for _ in range(3)]
    n = 10_000
    raw.zadd(Q, {f"item-{i}": i for i in range(n - 100)})
    for i in range(n - 100, n):
        await caches[i % 3].queue_add(A, "support", f"item-{i}", priority=i)
    popped: list[str] = []

    async def popper(cache: CallableCache) -> None:
        while (item := await cache.queue_pop(A, "support")) is not None:
            popped.append(item)

    await asyncio.gather(*(popper(caches[i % 3]) for i in range(50)))
    assert len(popped) == n
    assert set(popped) == {f"item-{i}" for i in range(n)}
    assert raw.zcard(Q) == 0


async def test_queue_meta(cache: CallableCache, raw: redis.Redis) -> None:
    assert await cache.get_queue_meta(A, "support") is None
    assert await cache.get_queues_meta(A) == []
    m = await cache.set_queue_meta(A, QueueMeta(name="support", strategy="priority", max_size=50))
    assert m.account_id == A
    await cache.set_queue_meta(A, QueueMeta(name="billing"))
    assert await cache.get_queue_meta(A, "support") == m
    assert [q.name for q in await cache.get_queues_meta(A)] == ["billing", "support"]
    doc = json.loads(raw.hget(META, "support"))
    doc["sla_seconds"] = 30  # another service's field
    raw.hset(META, "support", json.dumps(doc))
    await cache.set_queue_meta(A, QueueMeta(name="support", description="Help desk"))
    doc = json.loads(raw.hget(META, "support"))
    assert doc["sla_seconds"] == 30 and doc["description"] == "Help desk"
    assert await cache.delete_queue_meta(A, "support") is True
    assert await cache.delete_queue_meta(A, "support") is False
    assert await cache.get_queue_meta("acc2", "billing") is None
    with pytest.raises(ValidationError) as info:
        await cache.set_queue_meta(A, QueueMeta(name="x", account_id="acc2"))
    assert info.value.argument == "account_id"


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("queue_add", (A, "q:1", "i1"), "queue"),
        ("queue_add", ("a b", "q1", "i1"), "account_id"),
        ("queue_add", (A, "q1", "i*"), "item_id"),
        ("queue_add", (A, "q1", "i1", float("nan")), "priority"),
        ("queue_add", (A, "q1", "i1", float("-inf")), "priority"),
        ("queue_add", (A, "q1", "i1", "1"), "priority"),
        ("queue_add", (A, "q1", "i1", True), "priority"),
        ("queue_pop", (A, ""), "queue"),
        ("queue_pop", ("", "q1"), "account_id"),
        ("queue_pop_blocking", (A, "q1", 0), "timeout"),
        ("queue_pop_blocking", (A, "q1", -1), "timeout"),
        ("queue_pop_blocking", (A, "q1", float("inf")), "timeout"),
        ("queue_pop_blocking", (A, "q?", 1), "queue"),
        ("queue_peek", (A, "q1", 0), "n"),
        ("queue_peek", (A, "q1", 1.5), "n"),
        ("queue_peek", (A, "q[1]", 1), "queue"),
        ("queue_len", (A, 7), "queue"),
        ("queue_remove", (A, "q1", "i\t1"), "item_id"),
        ("queue_position", (A, "q1", ""), "item_id"),
        ("set_queue_meta", (A, QueueMeta(name="a:b")), "name"),
        ("set_queue_meta", (A, {"name": "q"}), "meta"),
        ("get_queue_meta", (A, "q*"), "name"),
        ("get_queues_meta", ("a}",), "account_id"),
        ("delete_queue_meta", (A, ""), "name"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
