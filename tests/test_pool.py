"""The connection pool turns a burst into waiting, never into errors, and bounds the wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, TimeoutError


async def test_callers_past_the_pool_size_wait_instead_of_failing(
    make_cache: Any, raw: redis.Redis
) -> None:
    cache = await make_cache(CacheConfig(max_connections=2, sync=False))
    raw.hset("cal:users", mapping={f"u{i}": f'{{"id":"u{i}"}}' for i in range(300)})
    # 300 concurrent misses on a pool of 2 (distinct ids: no single-flight sharing)
    got = await asyncio.gather(*(cache.get_user_by_id(f"u{i}") for i in range(300)))
    assert [u.id for u in got if u is not None] == [f"u{i}" for i in range(300)]
    assert cache.stats()["l2"]["errors"] == 0
    clients = [c for c in raw.client_list() if c.get("name", "") == ""]
    assert len(clients) <= 3  # the pool's 2 plus this test's own connection


async def test_a_full_pool_times_out_with_an_error_naming_it(make_cache: Any) -> None:
    cache = await make_cache(CacheConfig(max_connections=1, pool_timeout=0.2, sync=False))
    held = asyncio.create_task(cache.queue_pop_blocking("acc1", "q", 1.0))  # holds the one
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError, match="max_connections") as info:
        await cache.session_get("acc1", "s1")
    assert 0.15 <= loop.time() - t0 < 1.0
    assert "pool" in str(info.value)
    assert await held is None
    assert await cache.session_get("acc1", "s1") is None  # the pool works again


async def test_closing_wakes_the_waiters(make_cache: Any) -> None:
    from cal_redis import ClosedError

    cache = await make_cache(CacheConfig(max_connections=1, pool_timeout=5, sync=False))
    held = asyncio.create_task(cache.queue_pop_blocking("acc1", "q", 1.0))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(cache.session_get("acc1", "s1"))
    await asyncio.sleep(0.05)
    await cache.close()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(waiting, 2)
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
