"""Trunk IP → account mapping: canonical keys, cache-first reads, validation before I/O."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, ValidationError
from redis_stats import calls, reset_stats

# Trunk IP lookups are cache-first: each L1 implementation.
pytestmark = pytest.mark.l1


async def test_set_get_delete_v4_v6(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_trunk_ip("10.1.2.3", "acc1")
    await cache.set_trunk_ip("2001:0db8:0:0::0001", "acc2")
    assert raw.get("cal:trunk:10.1.2.3") == b"acc1"
    assert raw.get("cal:trunk:2001:db8::1") == b"acc2"
    assert await cache.get_trunk_account("10.1.2.3") == "acc1"
    assert await cache.get_trunk_account("2001:db8::1") == "acc2"
    assert await cache.get_trunk_account("2001:db8:0::1") == "acc2"  # same address, other text
    assert await cache.get_trunk_account("10.9.9.9") is None
    assert await cache.delete_trunk_ip("10.1.2.3") is True
    assert await cache.delete_trunk_ip("10.1.2.3") is False
    assert await cache.get_trunk_account("10.1.2.3") is None


async def test_cache_first(cache: CallableCache, raw: redis.Redis) -> None:
    raw.set("cal:trunk:192.0.2.7", "acc9")
    reset_stats(raw)
    assert await cache.get_trunk_account("192.0.2.7") == "acc9"
    assert await cache.get_trunk_account("192.0.2.7") == "acc9"
    assert calls(raw, "get") == 1


async def test_own_write_is_read_back(cache: CallableCache) -> None:
    await cache.set_trunk_ip("192.0.2.8", "acc1")
    assert await cache.get_trunk_account("192.0.2.8") == "acc1"
    await cache.set_trunk_ip("192.0.2.8", "acc2")
    assert await cache.get_trunk_account("192.0.2.8") == "acc2"


@pytest.mark.parametrize("bad", ["", "10.0.0", "not-an-ip", "fe80::1%eth0", 42])
async def test_bad_ip_rejected_before_io(cache: CallableCache, raw: redis.Redis, bad: Any) -> None:
    reset_stats(raw)
    for call in (
        cache.get_trunk_account(bad), cache.set_trunk_ip(bad, "acc1"), cache.delete_trunk_ip(bad)
    ):
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.argument == "trunk_ip"
    assert calls(raw, "get") == calls(raw, "set") == calls(raw, "del") == 0


async def test_bad_account_rejected(cache: CallableCache, raw: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        await cache.set_trunk_ip("10.0.0.1", "acc:1")
    assert info.value.argument == "account_id"
    assert raw.exists("cal:trunk:10.0.0.1") == 0


async def test_other_instance_sees_change_after_ttl_without_sync(make_cache: Any) -> None:
    import asyncio

    cfg = CacheConfig(sync=False).with_budget("trunks_ip", max_bytes=1 << 16, ttl=0.2)
    a = await make_cache(cfg)
    b = await make_cache(cfg)
    await a.set_trunk_ip("10.0.0.5", "acc1")
    assert await b.get_trunk_account("10.0.0.5") == "acc1"
    await a.set_trunk_ip("10.0.0.5", "acc2")
    await asyncio.sleep(0.3)
    assert await b.get_trunk_account("10.0.0.5") == "acc2"


async def test_write_on_one_instance_invalidates_the_other(make_cache: Any) -> None:
    import asyncio

    a = await make_cache()
    b = await make_cache()
    await a.set_trunk_ip("10.0.0.6", "acc1")
    assert await b.get_trunk_account("10.0.0.6") == "acc1"  # now in B's L1 (TTL 60 s)
    await a.set_trunk_ip("10.0.0.6", "acc2")
    for _ in range(200):
        if "10.0.0.6" not in b.local["trunks_ip"]:
            break
        await asyncio.sleep(0.005)
    assert await b.get_trunk_account("10.0.0.6") == "acc2"
    await a.delete_trunk_ip("10.0.0.6")
    for _ in range(200):
        if "10.0.0.6" not in b.local["trunks_ip"]:
            break
        await asyncio.sleep(0.005)
    assert await b.get_trunk_account("10.0.0.6") is None
