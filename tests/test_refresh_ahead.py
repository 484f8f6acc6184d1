"""Refresh-ahead: an L1 entry read during the last part of its TTL is read again from
Redis in the background (one read, through the single-flight, fenced fill), so a hot
key does not miss at expiry; the read that triggers it returns the cached value.

The L1 runs on a settable clock (``l1_clock``): reads land exactly inside or outside
the refresh window. Tests that need a read held in flight stop a private server
(SIGSTOP) for a moment.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from cal_redis import (
    CacheConfig,
    CallableCache,
    ConfigurationError,
    FlowState,
    Region,
    User,
    codec,
)
from cal_redis._context import Gate
from cal_redis.config import NamespaceBudget
from cal_redis.embedded import EmbeddedRedis
from cal_redis.engine.refresh import Refresher
from cal_redis.engine.single_flight import SingleFlight
from keyspace import K
from lru_support import FakeClock, clocked_l1
from private_redis import Factory, cache_factory, freeze, private_server, thaw
from redis_stats import calls, reset_stats
from waiting import until

# The refresh window is the L1's: each implementation.
pytestmark = pytest.mark.l1

TTL = 10.0


def user(i: int, **kw: Any) -> User:
    return User(id=f"u{i}", account_id="acc1", email=f"u{i}@x.io", username=f"user{i}",
                extension=f"{100 + i}", **kw)


def refresh_config(fraction: float = 0.5, **kw: Any) -> CacheConfig:
    cfg = CacheConfig(refresh_ahead=fraction, **kw)
    for ns in ("users", "trunks_ip", "regions"):
        cfg = cfg.with_budget(ns, max_bytes=1 << 20, ttl=TTL)
    return cfg


@pytest.fixture
def l1_clock(lru_cls: Any, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return clocked_l1(lru_cls, monkeypatch)


def refreshes(cache: CallableCache) -> int:
    return int(cache.stats()["refreshes"])


def hash_reads(raw: redis.Redis) -> int:
    """HGET and HMGET commands run (a refresh of entities is an HMGET)."""
    return calls(raw, "hget") + calls(raw, "hmget")


# --------------------------------------------------------------------------- config


def test_config() -> None:
    assert CacheConfig().refresh_ahead == 0.0
    assert CacheConfig(refresh_ahead=0.2).refresh_ahead_for("users") == 0.2
    cfg = CacheConfig(refresh_ahead=0.2).with_budget("users", max_bytes=1, ttl=1,
                                                     refresh_ahead=0)
    assert cfg.refresh_ahead_for("users") == 0.0 and cfg.refresh_ahead_for("devices") == 0.2
    for bad in (-0.1, 1.0, 2.0, math.nan):
        with pytest.raises(ConfigurationError, match="refresh_ahead"):
            CacheConfig(refresh_ahead=bad)
        with pytest.raises(ConfigurationError, match="refresh_ahead"):
            NamespaceBudget(1, 1.0, refresh_ahead=bad)


# --------------------------------------------------------------------------- the window


async def test_a_read_in_the_window_refreshes_before_expiry(
    make_cache: Any, raw: redis.Redis, l1_clock: FakeClock
) -> None:
    cache = await make_cache(refresh_config(0.5, sync=False))
    await cache.set_user(user(1, name="v1"))
    raw.hset(K.USERS, "u1", codec.encode(user(1, name="v2")))  # no event: L1 keeps v1
    reset_stats(raw)
    l1_clock.advance(4.9)  # before the window (the last half of 10 s)
    assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    assert refreshes(cache) == 0 and hash_reads(raw) == 0
    l1_clock.advance(0.1)  # 5 s: in the window
    assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]  # at once
    await until(lambda: refreshes(cache) == 1, what="the refresh")
    assert hash_reads(raw) == 1
    assert (await cache.get_user_by_id("u1")).name == "v2"  # type: ignore[union-attr]  # before expiry
    l1_clock.advance(4.9)  # 9.9 s: the refreshed entry (stored at 5 s) is not due yet
    for _ in range(10):
        assert (await cache.get_user_by_id("u1")).name == "v2"  # type: ignore[union-attr]
    l1_clock.advance(1.0)  # 10.9 s: past the first deadline; the refreshed entry lives
    assert (await cache.get_user_by_id("u1")).name == "v2"  # type: ignore[union-attr]
    assert cache.local["users"].misses == 0  # the hot key never missed
    # ... and is in its own window (from 10 s): refreshed in turn
    await until(lambda: refreshes(cache) == 2, what="the second refresh")
    assert hash_reads(raw) == 2 and cache.stats()["refresh_errors"] == 0


async def test_off_means_off(make_cache: Any, raw: redis.Redis, l1_clock: FakeClock) -> None:
    off = await make_cache(refresh_config(0.0, sync=False))
    opted_out = await make_cache(
        refresh_config(0.5, sync=False).with_budget("users", max_bytes=1 << 20, ttl=TTL,
                                                    refresh_ahead=0))
    for c in (off, opted_out):
        await c.set_user(user(1))
    await opted_out.set_region(Region(id="r1", code="eu"))
    reset_stats(raw)
    l1_clock.advance(9.9)
    for c in (off, opted_out):
        assert await c.get_user_by_id("u1") is not None
    assert await opted_out.get_region("r1") is not None  # its namespace refreshes
    await until(lambda: refreshes(opted_out) == 1, what="the region's refresh")
    assert off.local["users"].refresh_fraction == 0.0
    assert opted_out.local["users"].refresh_fraction == 0.0
    assert refreshes(off) == 0 and hash_reads(raw) == 1


async def test_batches_and_idents_refresh_too(
    make_cache: Any, raw: redis.Redis, l1_clock: FakeClock
) -> None:
    cache = await make_cache(refresh_config(0.5, sync=False))
    for i in range(1, 4):
        await cache.set_user(user(i))
    assert (await cache.get_user_by_ident("user1")).id == "u1"  # type: ignore[union-attr]
    l1_clock.advance(5.0)
    reset_stats(raw)
    assert [u.id for u in await cache.get_users_batch(["u1", "u2", "u3"])] == ["u1", "u2", "u3"]
    assert (await cache.get_user_by_ident("user1")).id == "u1"  # type: ignore[union-attr]
    await until(lambda: refreshes(cache) == 4, what="3 entities and 1 ident mapping")
    assert calls(raw, "hmget") == 1 and calls(raw, "hget") == 1  # the entities in one
    l1_clock.advance(5.0)  # past every first deadline
    reset_stats(raw)
    await cache.get_users_batch(["u1", "u2", "u3"])
    await cache.get_user_by_ident("user1")
    assert hash_reads(raw) == 0  # all hits


async def test_trunk_ips_and_flow_states_refresh(
    make_cache: Any, raw: redis.Redis, l1_clock: FakeClock
) -> None:
    cache = await make_cache(refresh_config(0.5, sync=False).with_budget(
        "flow_states", max_bytes=1 << 20, ttl=TTL))
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    await cache.set_flow_state("acc1", FlowState(id="f1", data={"n": 1}), ttl=3600)
    raw.set(K.trunk_ip("192.0.2.1"), b"acc2")  # changed by another writer, no event
    l1_clock.advance(5.0)
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    assert (await cache.get_flow_state("acc1", "f1")).data == {"n": 1}  # type: ignore[union-attr]
    await until(lambda: refreshes(cache) == 2, what="the two refreshes")
    assert await cache.get_trunk_account("192.0.2.1") == "acc2"
    l1_clock.advance(5.0)
    assert (await cache.get_flow_state("acc1", "f1")).data == {"n": 1}  # type: ignore[union-attr]
    assert cache.local["flow_states"].misses == 0


async def test_a_refresh_error_is_counted_never_raised(
    make_cache: Any, raw: redis.Redis, l1_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache(refresh_config(0.5, sync=False))
    await cache.set_user(user(1, name="v1"))
    raw.hset(K.USERS, "u1", b"{not json")
    l1_clock.advance(5.0)
    with caplog.at_level(logging.DEBUG, logger="cal_redis.refresh"):
        assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
        await until(lambda: cache.stats()["refresh_errors"] == 1, what="the failed refresh")
    assert refreshes(cache) == 0
    (rec,) = [r for r in caplog.records if r.name == "cal_redis.refresh"]
    assert rec.levelno == logging.DEBUG and "users" in rec.getMessage()
    assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]  # not due again


def test_no_refresh_while_the_gate_is_closed(lru_cls: Any) -> None:
    """The gate closes while events may be lost (L1 is not filled then): a due entry
    starts no refresh. Without a running loop (a synchronous read) none starts either."""
    started: list[object] = []

    async def refresh(keys: list[object]) -> list[Any]:
        started.extend(keys)
        return []

    async def main() -> None:
        clock = FakeClock()
        l1 = lru_cls(100, 10.0, clock=clock)
        gate = Gate(fill_ok=False)
        refresher = Refresher(l1, gate, SingleFlight(), refresh, 0.5, "users")
        l1.set("k", 1, 1)
        clock.advance(6.0)
        assert l1.get("k") == 1
        for _ in range(3):
            await asyncio.sleep(0)
        assert started == [] and len(refresher) == 0
        gate.fill_ok = True
        l1.set("k", 1, 1)
        clock.advance(6.0)
        assert l1.get("k") == 1
        await until(lambda: refresher.refreshes == 1, what="the refresh")
        assert started == ["k"] and len(refresher) == 0

    asyncio.run(main())
    l1 = lru_cls(100, 10.0)
    Refresher(l1, Gate(), SingleFlight(), refresh, 0.5, "users")
    l1.set("k", 1, 1, ttl=0.001)
    assert l1.get("k", "gone") in (1, "gone")  # no loop: nothing scheduled, no error


# --------------------------------------------------------------------------- races


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    yield from private_server()


@pytest.fixture
async def private(server: EmbeddedRedis) -> AsyncIterator[Factory]:
    async with cache_factory(server.url) as make:
        yield make


@pytest.mark.standalone_only
async def test_an_invalidation_racing_a_refresh_wins(
    private: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """The refresh's read is held (server stopped) while an event from another
    instance changes the user: the read's older value is refused (fenced) and the
    event's stays."""
    cache = await private(refresh_config(0.5, heartbeat_interval=30.0))
    await cache.set_user(user(1, name="v1"))
    rw = redis.Redis.from_url(server.url)
    rw.hset(cache.keys.USERS, "u1", codec.encode(user(1, name="v2")))
    rw.close()
    users = cache.local["users"]
    stale_before = users.stale_fills
    l1_clock.advance(5.0)
    freeze(server)
    try:
        assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
        await until(lambda: users.inflight == 1, what="the refresh's read in flight")
        event = codec.event("UserUpdate", "u1", origin="another-instance",
                            data=codec.encode(user(1, name="v3")))
        cache._sync.dispatcher.on_message(cache.keys.EVENTS, event)
        assert users.peek("u1").name == "v3"
    finally:
        thaw(server)
    await until(lambda: refreshes(cache) == 1, what="the refresh")
    assert users.stale_fills == stale_before + 1  # v2 refused
    assert (await cache.get_user_by_id("u1")).name == "v3"  # type: ignore[union-attr]


@pytest.mark.standalone_only
async def test_a_miss_joins_the_refresh_in_flight(
    private: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """One single-flight: a read that misses while the key's refresh is in flight
    waits for that read instead of sending its own."""
    cache = await private(refresh_config(0.5, sync=False))
    await cache.set_user(user(1, name="v1"))
    l1_clock.advance(5.0)
    freeze(server)
    try:
        assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
        await until(lambda: cache.local["users"].inflight == 1, what="the refresh's read")
        l1_clock.advance(5.0)  # expired: the next read misses
        reads = cache.remote.stats()["reads"]
        miss = asyncio.ensure_future(cache.get_user_by_id("u1"))
        await until(lambda: cache.stats()["single_flight_joins"] == 1, what="the join")
    finally:
        thaw(server)
    assert (await miss).name == "v1"  # type: ignore[union-attr]
    assert cache.remote.stats()["reads"] == reads  # no read of its own
    assert refreshes(cache) == 1


@pytest.mark.standalone_only
async def test_close_cancels_refreshes_in_flight(
    private: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await private(refresh_config(0.5, sync=False))
    await cache.set_user(user(1))
    await cache.set_user(user(2))
    l1_clock.advance(5.0)
    freeze(server)
    try:
        await cache.get_users_batch(["u1", "u2"])
        refresher = cache._users.refresher
        await until(lambda: len(refresher) == 2 and cache.local["users"].inflight >= 1,
                    what="two refreshes in flight")
        tasks = list(refresher._tasks)
        await asyncio.wait_for(cache.close(), 5.0)
    finally:
        thaw(server)
    assert all(t.cancelled() for t in tasks)
    assert len(refresher) == 0 and refresher.refreshes == 0 and refresher.errors == 0


async def test_refreshes_are_exported_as_metrics(
    make_cache: Any, raw: redis.Redis, l1_clock: FakeClock
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from test_metrics import collect, ns, value

    reader = InMemoryMetricReader()
    cache = await make_cache(refresh_config(
        0.5, sync=False, meter_provider=MeterProvider(metric_readers=[reader])))
    await cache.set_user(user(1))
    await cache.set_user(user(2))
    raw.hset(K.USERS, "u2", b"{not json")
    l1_clock.advance(5.0)
    await cache.get_users_batch(["u1", "u2"])
    await until(lambda: refreshes(cache) == 1 and cache.stats()["refresh_errors"] == 1,
                what="one refresh done, one failed")
    points = collect(reader)
    assert value(points, "cal_redis.l1.refreshes", **ns("users")) == 1
    assert value(points, "cal_redis.l1.refresh_errors", **ns("users")) == 1


@pytest.mark.standalone_only
async def test_a_refresh_that_cannot_reach_redis_is_counted(
    private: Any, server: EmbeddedRedis, l1_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await private(refresh_config(0.5, sync=False, read_retries=0))
    await cache.set_user(user(1, name="v1"))
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    l1_clock.advance(5.0)
    server.stop()
    with caplog.at_level(logging.DEBUG, logger="cal_redis.refresh"):
        assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
        assert await cache.get_trunk_account("192.0.2.1") == "acc1"
        await until(lambda: cache.stats()["refresh_errors"] == 2, what="two failed refreshes")
    assert refreshes(cache) == 0
    assert {r.levelno for r in caplog.records if r.name == "cal_redis.refresh"} == {logging.DEBUG}
    assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]  # live
