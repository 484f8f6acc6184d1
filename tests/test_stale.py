"""Serve-stale on error: while Redis cannot be reached, a cache-first read returns what
L1 still holds for the key if it was filled or confirmed within the namespace's
``stale_if_error`` window, and the error otherwise; never while Redis answers.

Each test kills (or stops) a private redis-server of its own. The L1 runs on a settable
clock (``l1_clock``), so expiry and the stale window are crossed exactly, without sleeps.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from cal_redis import (
    CacheConfig,
    CallableCache,
    ConfigurationError,
    ConnectionError,
    FlowState,
    SerializationError,
    User,
    ValidationError,
)
from cal_redis.config import NamespaceBudget
from cal_redis.embedded import EmbeddedRedis
from lru_support import FakeClock, clocked_l1
from private_redis import Factory, cache_factory, freeze, private_server, thaw
from waiting import until

# The stale window and the held entries live in L1: each implementation. A private
# server per test (it is killed), so not on the shared cluster.
pytestmark = [pytest.mark.l1, pytest.mark.standalone_only]

WINDOW = 30.0  # the stale window of these tests (s, on the L1's fake clock)
TTL = 5.0  # the users' L1 TTL


def user(i: int, **kw: Any) -> User:
    return User(id=f"u{i}", account_id="acc1", email=f"u{i}@x.io", username=f"user{i}",
                extension=f"{100 + i}", **kw)


def stale_config(window: float = WINDOW, **kw: Any) -> CacheConfig:
    cfg = CacheConfig(stale_if_error=window, connect_timeout=0.5, socket_timeout=0.5,
                      read_retries=1, heartbeat_interval=0.2, **kw)
    return cfg.with_budget("users", max_bytes=1 << 20, ttl=TTL, negative_ttl=1.0)


@pytest.fixture
def l1_clock(lru_cls: Any, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Caches made from now on get L1s of ``lru_cls`` on this clock."""
    return clocked_l1(lru_cls, monkeypatch)


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    yield from private_server()


@pytest.fixture
async def caches(server: EmbeddedRedis) -> AsyncIterator[Factory]:
    """Factory of caches on the private server; closed at teardown."""
    async with cache_factory(server.url) as make:
        yield make


def restart(server: EmbeddedRedis) -> EmbeddedRedis:
    """A new (empty) server on the port of the stopped one."""
    return EmbeddedRedis(port=server.port).start()


async def killed(cache: CallableCache, server: EmbeddedRedis) -> None:
    """Stop the server and wait until the cache's sync has seen the loss."""
    server.stop()
    await until(lambda: cache.stats()["sync"]["state"] == "degraded", 5.0, "degraded")


# --------------------------------------------------------------------------- config


def test_config() -> None:
    cfg = CacheConfig()
    assert cfg.stale_if_error == 0.0 and not cfg.serves_stale
    assert cfg.stale_if_error_for("users") == 0.0
    cfg = CacheConfig(stale_if_error=10)
    assert cfg.serves_stale and cfg.stale_if_error_for("devices") == 10.0
    off = cfg.with_budget("users", max_bytes=1, ttl=1, stale_if_error=0)
    assert off.stale_if_error_for("users") == 0.0 and off.stale_if_error_for("regions") == 10
    only = CacheConfig().with_budget("users", max_bytes=1, ttl=1, stale_if_error=5)
    assert only.serves_stale and only.stale_if_error_for("regions") == 0.0
    assert not CacheConfig(stale_if_error=10, local_cache=False).serves_stale
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError, match="stale_if_error"):
            CacheConfig(stale_if_error=bad)
        with pytest.raises(ConfigurationError, match="stale_if_error"):
            NamespaceBudget(1, 1.0, stale_if_error=bad)


async def test_the_dispatcher_holds_l1_only_when_serving_stale(caches: Any) -> None:
    on = await caches(stale_config())
    off = await caches(stale_config(window=0))
    assert on._sync.dispatcher.hold_on_loss is True
    assert off._sync.dispatcher.hold_on_loss is False
    assert on.local["users"].stale_window == WINDOW and off.local["users"].stale_window == 0


# --------------------------------------------------------------------------- outage


async def test_hot_keys_served_for_the_window_then_the_error(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await caches(stale_config())
    await cache.set_user(user(1, name="one"))  # an own write: L1 holds it
    assert (await cache.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
    await killed(cache, server)
    assert cache.local["users"].suspended and len(cache.local["users"]) == 1  # held
    got = await cache.get_user_by_id("u1")  # held (suspended): served stale
    assert got is not None and got.name == "one"
    l1_clock.advance(TTL)  # expired too
    assert (await cache.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
    with pytest.raises(ConnectionError):
        await cache.get_user_by_ident("u1@x.io")  # the mapping was never cached
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u2")  # never cached: nothing to serve
    l1_clock.advance(WINDOW - TTL - 0.5)  # 29.5 s after the write: still served
    assert (await cache.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
    assert cache.stats()["stale_serves"] == 3
    l1_clock.advance(0.5)  # the window is over
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    assert cache.stats()["stale_serves"] == 3


async def test_ident_lookups_served_stale(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await caches(stale_config())
    await cache.set_user(user(1, name="one"))
    assert (await cache.get_user_by_ident("user1")).name == "one"  # type: ignore[union-attr]
    assert await cache.get_user_by_ident("nobody") is None  # cached absent
    await killed(cache, server)
    l1_clock.advance(TTL)
    assert (await cache.get_user_by_ident("user1")).name == "one"  # type: ignore[union-attr]
    assert await cache.get_user_by_ident("nobody") is None  # absent, served as None
    with pytest.raises(ConnectionError):
        await cache.get_user_by_ident("u1@x.io")  # this mapping was never cached
    assert cache.stats()["stale_serves"] == 2


async def test_absent_entries_are_served_stale_as_none(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await caches(stale_config())
    assert await cache.get_user_by_id("u9") is None  # negative entry (1 s)
    assert await cache.get_trunk_account("198.51.100.9") is None
    await killed(cache, server)
    l1_clock.advance(2.0)  # past the negative TTL, within the window
    assert await cache.get_user_by_id("u9") is None
    assert await cache.get_users_batch(["u9"]) == [None]
    assert await cache.get_trunk_account("198.51.100.9") is None
    assert cache.stats()["stale_serves"] == 3
    l1_clock.advance(WINDOW)
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u9")


async def test_batches_serve_each_id_on_its_own(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """Without sync (nothing suspended) a live entry is a hit, an expired one is served
    stale, and a batch with an id that has neither raises the original error."""
    cache = await caches(stale_config(sync=False))
    await cache.set_user(user(1, name="one"))
    l1_clock.advance(TTL)  # u1 expired (kept)
    await cache.set_user(user(2, name="two"))  # u2 live
    server.stop()
    got = await cache.get_users_batch(["u1", "u2", "u1"])
    assert [u.name for u in got if u is not None] == ["one", "two", "one"]
    assert cache.stats()["stale_serves"] == 1  # u1 once (asked twice, read once)
    with pytest.raises(ConnectionError) as info:
        await cache.get_users_batch(["u1", "u3"])  # u3: nothing to serve
    assert "cannot reach Redis" in str(info.value)
    assert cache.stats()["stale_serves"] == 1


async def test_trunk_ips_and_flow_states(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """String-key values too; a flow state (read with its Redis TTL) never past it."""
    cache = await caches(stale_config())
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    await cache.set_flow_state("acc1", FlowState(id="f1", data={"step": 1}), ttl=10)
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    await killed(cache, server)
    l1_clock.advance(9.0)
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"  # held: served stale
    got = await cache.get_flow_state("acc1", "f1")  # held, within its Redis TTL
    assert got is not None and got.data == {"step": 1}
    l1_clock.advance(1.0)  # the flow state's key has expired in Redis by now
    with pytest.raises(ConnectionError):
        await cache.get_flow_state("acc1", "f1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    l1_clock.advance(WINDOW - 10.0)  # live in L1 (60 s TTL) but filled 30 s ago
    with pytest.raises(ConnectionError):
        await cache.get_trunk_account("192.0.2.1")
    assert cache.stats()["stale_serves"] == 3


async def test_redis_back_values_are_read_fresh(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """Once Redis answers no stale value is served: a value another client changed
    meanwhile is read as it is now, before and after the sync is restored."""
    cache = await caches(stale_config())
    await cache.set_user(user(1, name="before"))
    await cache.set_user(user(2, name="two"))
    await killed(cache, server)
    assert (await cache.get_user_by_id("u1")).name == "before"  # type: ignore[union-attr]
    back = restart(server)
    try:
        raw = redis.Redis.from_url(back.url)
        raw.hset(cache.keys.USERS, "u1", _json(user(1, name="after")))
        got = await cache.get_user_by_id("u1")
        assert got is not None and got.name == "after"
        assert await cache.get_user_by_id("u2") is None  # gone with the old server
        assert await cache.get_users_batch(["u1", "u2"]) == [got, None]
        await until(lambda: cache.stats()["sync"]["state"] == "connected", 10.0, "connected")
        assert not cache.local["users"].suspended
        assert cache.local["users"].get_stale("u2", WINDOW) is None  # flushed on resubscribe
        assert (await cache.get_user_by_id("u1")).name == "after"  # type: ignore[union-attr]
        assert cache.stats()["stale_serves"] == 1
        raw.close()
    finally:
        back.stop()


def _json(u: User) -> bytes:
    from cal_redis import codec

    return codec.encode(u)


async def test_never_on_other_errors(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """A value Redis returns that does not decode, an invalid argument, a value Redis
    no longer has: never answered from the stale copy."""
    cache = await caches(stale_config(sync=False))
    await cache.set_user(user(1, name="one"))
    await cache.set_user(user(2, name="two"))
    l1_clock.advance(TTL)  # both expired, both kept
    raw = redis.Redis.from_url(server.url)
    raw.hset(cache.keys.USERS, "u1", b"{not json")
    raw.hdel(cache.keys.USERS, "u2")
    raw.close()
    with pytest.raises(SerializationError):
        await cache.get_user_by_id("u1")
    with pytest.raises(SerializationError):
        await cache.get_users_batch(["u1"])
    assert await cache.get_user_by_id("u2") is None
    with pytest.raises(ValidationError):
        await cache.get_user_by_id("")
    assert cache.stats()["stale_serves"] == 0


async def test_a_failed_write_leaves_nothing_to_serve(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await caches(stale_config(sync=False))
    await cache.set_user(user(1, name="one"))
    server.stop()
    with pytest.raises(ConnectionError):
        await cache.set_user(user(1, name="two"))  # outcome unknown: L1 drops the key
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    assert cache.stats()["stale_serves"] == 0


async def test_off_is_todays_behaviour(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """``stale_if_error=0``: the loss flushes L1 and every read raises."""
    cache = await caches(stale_config(window=0))
    await cache.set_user(user(1, name="one"))
    assert await cache.get_user_by_id("u1") is not None
    await killed(cache, server)
    assert len(cache.local["users"]) == 0 and not cache.local["users"].suspended
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    with pytest.raises(ConnectionError):
        await cache.get_users_batch(["u1"])
    assert cache.stats()["stale_serves"] == 0


async def test_off_without_sync_expired_entries_are_not_kept(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cache = await caches(stale_config(window=0, sync=False))
    await cache.set_user(user(1, name="one"))
    l1_clock.advance(TTL)
    server.stop()
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    assert len(cache.local["users"]) == 0


async def test_a_namespace_can_opt_out(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    cfg = stale_config().with_budget("users", max_bytes=1 << 20, ttl=TTL, stale_if_error=0)
    cache = await caches(cfg)
    await cache.set_user(user(1))
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"  # a write does not fill it
    await killed(cache, server)
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"


async def test_a_timeout_is_an_error_that_serves_stale(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """A server that stops answering (SIGSTOP): the read times out, the stale value is
    served; once it answers again, the value is read from it."""
    cache = await caches(stale_config(sync=False))
    await cache.set_user(user(1, name="one"))
    l1_clock.advance(TTL)
    freeze(server)
    try:
        got = await asyncio.wait_for(cache.get_user_by_id("u1"), 10)
        assert got is not None and got.name == "one"
    finally:
        thaw(server)
    raw = redis.Redis.from_url(server.url)
    raw.hset(cache.keys.USERS, "u1", _json(user(1, name="fresh")))
    raw.close()
    got = await cache.get_user_by_id("u1")
    assert got is not None and got.name == "fresh"
    assert cache.stats()["stale_serves"] == 1


async def test_stale_serves_are_exported_as_a_metric(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from test_metrics import collect, ns, value

    reader = InMemoryMetricReader()
    cache = await caches(stale_config(
        sync=False, meter_provider=MeterProvider(metric_readers=[reader])))
    await cache.set_user(user(1))
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    l1_clock.advance(TTL)
    server.stop()
    for _ in range(3):
        assert await cache.get_user_by_id("u1") is not None
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    points = collect(reader)
    assert value(points, "cal_redis.l1.stale_serves", **ns("users")) == 3
    assert value(points, "cal_redis.l1.stale_serves", **ns("trunks_ip")) == 0  # a live hit
    assert value(points, "cal_redis.l1.stale_serves", **ns("regions")) == 0


async def test_invalidations_reach_kept_entries(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """An invalidation of ids or of a whole tenant drops expired entries kept for the
    stale window (and the ident mappings they name): none of them is served after."""
    cfg = stale_config(sync=False).with_budget("trunks_ip", max_bytes=1 << 20, ttl=TTL)
    cache = await caches(cfg)
    await cache.set_user(user(1))
    await cache.set_user(user(2))
    await cache.set_user(User(id="u3", account_id="acc2", email="u3@x.io"))
    for ident in ("user1", "user2"):
        assert await cache.get_user_by_ident(ident) is not None
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    l1_clock.advance(TTL)  # every entry expired, all kept for the window
    users = cache.local["users"]
    assert users.peek("u1") is None and users.get_stale("u1", WINDOW) is not None
    await cache.invalidate("User", ["u2"])
    await cache.invalidate_account("acc1")
    server.stop()
    for call in (lambda: cache.get_user_by_id("u1"), lambda: cache.get_user_by_id("u2"),
                 lambda: cache.get_user_by_ident("user1"),
                 lambda: cache.get_user_by_ident("user2"),
                 lambda: cache.get_trunk_account("192.0.2.1")):
        with pytest.raises(ConnectionError):
            await call()
    assert (await cache.get_user_by_id("u3")).account_id == "acc2"  # type: ignore[union-attr]
    assert cache.stats()["stale_serves"] == 1


async def test_a_tenant_drop_reaches_suspended_entries(
    caches: Any, server: EmbeddedRedis, l1_clock: FakeClock
) -> None:
    """While L1 is suspended (held on a loss), dropping a tenant (what a replayed
    ``TenantInvalidate`` does) drops its held entries of every kind: they are neither
    served stale now nor served again once L1 resumes."""
    cache = await caches(stale_config())
    await cache.set_user(user(1))  # acc1
    await cache.set_user(User(id="u3", account_id="acc2", email="u3@x.io"))
    await cache.set_trunk_ip("192.0.2.1", "acc1")
    assert await cache.get_trunk_account("192.0.2.1") == "acc1"
    await killed(cache, server)
    assert cache._sync.dispatcher.drop_account("acc1") == 2
    with pytest.raises(ConnectionError):
        await cache.get_user_by_id("u1")
    with pytest.raises(ConnectionError):
        await cache.get_trunk_account("192.0.2.1")
    assert (await cache.get_user_by_id("u3")).account_id == "acc2"  # type: ignore[union-attr]
    cache.local.resume()
    assert cache.local["users"].peek("u1") is None and cache.local["users"].peek("u3")
