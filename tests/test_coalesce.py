"""Concurrent cache-first misses of one hash are coalesced into one HMGET, keeping each
caller's value, error and cancellation its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, SerializationError
from keyspace import K
from redis_stats import calls, reset_stats

pytestmark = pytest.mark.l1  # fills into L1: each implementation

NO_SYNC = CacheConfig(sync=False)


def seed(raw: redis.Redis, n: int) -> None:
    raw.hset("cal:users", mapping={f"u{i}": f'{{"id":"u{i}","name":"n{i}"}}' for i in range(n)})


async def test_concurrent_misses_share_round_trips(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    seed(raw, 200)
    reset_stats(raw)
    got = await asyncio.gather(*(cache.get_user_by_id(f"u{i}") for i in range(200)))
    assert [u.name for u in got if u is not None] == [f"n{i}" for i in range(200)]
    assert calls(raw, "hget") == 1  # the first miss went alone, at once
    assert 1 <= calls(raw, "hmget") <= 2  # the 199 that arrived meanwhile: together
    assert len(cache.local["users"]) == 200  # each caller filled its own entry


async def test_a_lone_miss_is_one_hget(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    seed(raw, 1)
    reset_stats(raw)
    assert (await cache.get_user_by_id("u0")).name == "n0"  # type: ignore[union-attr]
    assert calls(raw, "hget") == 1 and calls(raw, "hmget") == 0


async def test_coalescing_off_sends_one_hget_per_miss(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(CacheConfig(sync=False, coalesce_reads=False))
    seed(raw, 50)
    reset_stats(raw)
    await asyncio.gather(*(cache.get_user_by_id(f"u{i}") for i in range(50)))
    assert calls(raw, "hget") == 50 and calls(raw, "hmget") == 0


async def test_a_corrupt_value_fails_only_its_caller(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    seed(raw, 20)
    raw.hset("cal:users", "u7", b"{broken")
    got = await asyncio.gather(
        *(cache.get_user_by_id(f"u{i}") for i in range(20)), return_exceptions=True
    )
    assert isinstance(got[7], SerializationError) and got[7].field == "u7"
    assert all(getattr(u, "name", None) == f"n{i}" for i, u in enumerate(got) if i != 7)


async def test_cancelling_one_caller_leaves_the_others(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    seed(raw, 30)
    tasks = [asyncio.create_task(cache.get_user_by_id(f"u{i}")) for i in range(30)]
    await asyncio.sleep(0)  # all are waiting on their reads
    tasks[5].cancel()
    tasks[0].cancel()  # the one whose HGET went alone
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    # (redis-py may finish a read already answered instead of cancelling it)
    assert isinstance(done[0], asyncio.CancelledError) or done[0].name == "n0"  # type: ignore[union-attr]
    assert all(getattr(u, "name", None) == f"n{i}" for i, u in enumerate(done) if i not in (0, 5))
    assert (await cache.get_user_by_id("u5")).name == "n5"  # type: ignore[union-attr]


async def test_ident_misses_are_coalesced_too(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    raw.hset("cal:users", mapping={
        f"u{i}": f'{{"id":"u{i}","email":"u{i}@x.io"}}' for i in range(50)})
    raw.hset(K.USER_IDENTS, mapping={f"u{i}@x.io": f"u{i}" for i in range(50)})
    reset_stats(raw)
    got = await asyncio.gather(*(cache.get_user_by_ident(f"u{i}@x.io") for i in range(50)))
    assert [u.id for u in got if u is not None] == [f"u{i}" for i in range(50)]
    assert calls(raw, "hget") + calls(raw, "hmget") <= 10  # not 100 (50 idents + 50 users)


async def test_a_coalesced_fill_is_fenced(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(NO_SYNC)
    seed(raw, 10)
    l1 = cache.local["users"]
    tasks = [asyncio.create_task(cache.get_user_by_id(f"u{i}")) for i in range(10)]
    await asyncio.sleep(0)  # every read is in flight (or queued)
    raw.hset("cal:users", "u3", b'{"id":"u3","name":"newer"}')
    l1.invalidate("u3")  # what the write's event does while the reads are in flight
    await asyncio.gather(*tasks)
    assert l1.peek("u3") is None  # the older value read before the write is not kept
    assert l1.peek("u4") is not None
