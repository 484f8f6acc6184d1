"""Negative caching: a lookup that finds nothing is remembered as absent for the
namespace's ``negative_ttl``; events, own writes and racing fills drop or beat it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, ConfigurationError, User
from cal_redis.config import NamespaceBudget
from cal_redis.engine.negative import ABSENT
from cal_redis.engine.ttl_keys import TtlKeys
from redis_stats import calls, reset_stats
from waiting import until

# Negative entries live in L1: each L1 implementation.
pytestmark = pytest.mark.l1


def user(i: int, **kw: Any) -> User:
    return User(id=f"u{i}", account_id="acc1", email=f"u{i}@x.io", username=f"user{i}",
                extension=f"{100 + i}", **kw)


def neg(ttl: float, *namespaces: str) -> CacheConfig:
    cfg = CacheConfig()
    for ns in namespaces:
        b = cfg.budget(ns)
        cfg = cfg.with_budget(ns, max_bytes=b.max_bytes, ttl=b.ttl, negative_ttl=ttl)
    return cfg


def test_config_validation() -> None:
    assert CacheConfig().budget("trunks_ip").negative_ttl == 5.0
    assert NamespaceBudget(1, 1.0, 0).negative_ttl == 0  # 0: off
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError, match="negative_ttl"):
            NamespaceBudget(1, 1.0, bad)
        with pytest.raises(ConfigurationError, match="negative_ttl"):
            CacheConfig().with_budget("users", max_bytes=1, ttl=1, negative_ttl=bad)


async def test_unknown_trunk_ip_costs_one_get(cache: CallableCache, raw: redis.Redis) -> None:
    reset_stats(raw)
    for _ in range(100):
        assert await cache.get_trunk_account("198.51.100.7") is None
    assert calls(raw, "get") == 1
    assert cache.local["trunks_ip"].peek("198.51.100.7") is ABSENT


async def test_negative_ttl_expires_and_zero_is_off(make_cache: Any, raw: redis.Redis) -> None:
    short = await make_cache(neg(0.2, "trunks_ip"))
    off = await make_cache(neg(0, "trunks_ip"))
    reset_stats(raw)
    assert await short.get_trunk_account("198.51.100.8") is None
    assert await short.get_trunk_account("198.51.100.8") is None
    assert calls(raw, "get") == 1
    await asyncio.sleep(0.3)
    assert await short.get_trunk_account("198.51.100.8") is None
    assert calls(raw, "get") == 2
    reset_stats(raw)
    for _ in range(3):
        assert await off.get_trunk_account("198.51.100.8") is None
    assert calls(raw, "get") == 3


async def test_unknown_ids_and_idents(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_user(user(1))
    reset_stats(raw)
    for _ in range(5):
        assert await cache.get_user("u404") is None
        assert await cache.get_user_by_ident("nobody@x.io") is None
        assert await cache.get_flow_state("acc1", "f404") is None
    assert calls(raw, "hget") == 2 and calls(raw, "multi") == 1
    # A batch reads the absent id from L1 as None and fetches only the real miss.
    cache.local["users"].invalidate("u1")
    assert await cache.get_users_batch(["u404", "u1", "u404"]) == [None, user(1), None]
    assert calls(raw, "hmget") + calls(raw, "hget") == 3  # u1 alone


async def test_own_writes_drop_absent(cache: CallableCache) -> None:
    assert await cache.get_trunk_account("198.51.100.9") is None
    assert await cache.get_user("u2") is None
    assert await cache.get_user_by_ident("u2@x.io") is None
    assert await cache.get_flow_state("acc1", "f2") is None
    await cache.set_trunk_ip("198.51.100.9", "acc1")
    await cache.set_user(user(2))
    from cal_redis import FlowState
    await cache.set_flow_state("acc1", FlowState(id="f2", account_id="acc1"))
    assert await cache.get_trunk_account("198.51.100.9") == "acc1"
    assert await cache.get_user("u2") == user(2)
    assert await cache.get_user_by_ident("u2@x.io") == user(2)
    assert (await cache.get_flow_state("acc1", "f2")) is not None


async def test_events_drop_absent_on_the_other_instance(make_cache: Any) -> None:
    a = await make_cache()
    b = await make_cache()
    assert await b.get_trunk_account("198.51.100.10") is None
    assert await b.get_user("u3") is None
    assert await b.get_user_by_ident("user3") is None
    l1 = b.local["users"]
    await a.set_trunk_ip("198.51.100.10", "acc1")
    await a.set_user(user(3))
    await until(lambda: "198.51.100.10" not in b.local["trunks_ip"] and l1.peek("u3") == user(3)
                and l1.peek(("\x00ident", "user3")) is not ABSENT, what="events applied on b")
    assert await b.get_trunk_account("198.51.100.10") == "acc1"
    assert await b.get_user_by_ident("user3") == user(3)


async def test_dataless_create_drops_absent_idents(cache: CallableCache, raw: redis.Redis) -> None:
    """A foreign writer's Create without data: which idents resolve is unknown."""
    assert await cache.get_user_by_ident("user4") is None
    raw.hset("cal:users", "u4", bytes(__import__("msgspec").json.encode(user(4))))
    raw.hset(cache.keys.USER_IDENTS, "user4", "u4")
    raw.publish("cal:events", b'{"type":"UserCreate","id":"u4"}')
    await until(lambda: ("\x00ident", "user4") not in cache.local["users"], what="ident dropped")
    assert await cache.get_user_by_ident("user4") == user(4)


async def test_a_write_racing_the_miss_wins(
    make_cache: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The miss reads "absent", then another instance writes and its event lands
    before the miss stores: the absent entry is refused (fenced), not cached."""
    a = await make_cache()
    b = await make_cache()
    read_done, release = asyncio.Event(), asyncio.Event()
    real_read: Callable[[TtlKeys[Any], str], Awaitable[Any]] = TtlKeys._read

    async def held_read(self: TtlKeys[Any], key: str) -> Any:
        got = await real_read(self, key)
        read_done.set()
        await release.wait()
        return got

    monkeypatch.setattr(TtlKeys, "_read", held_read)
    miss = asyncio.create_task(b.get_trunk_account("198.51.100.11"))
    await read_done.wait()
    monkeypatch.setattr(TtlKeys, "_read", real_read)
    await a.set_trunk_ip("198.51.100.11", "acc1")
    l1 = b.local["trunks_ip"]
    # The event, applied while the fill is in flight, fences its key.
    await until(lambda: l1.fence_size > 0, what="event applied on b")
    release.set()
    assert await miss is None  # what Redis held when it was read
    assert await b.get_trunk_account("198.51.100.11") == "acc1"
