"""CallableCache cache-first entities over a real redis-server, with both L1 implementations."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    Account,
    CacheConfig,
    CallableCache,
    ConnectionError,
    Device,
    NotFoundError,
    Proxy,
    Region,
    SerializationError,
    User,
    ValidationError,
)
from cal_redis.embedded import EmbeddedRedis
from cal_redis.remote import hiredis_available
from keyspace import K
from redis_stats import assert_rejected_before_io, calls, data_keys, reset_stats

# Cache-first entities: the L1 hot path, with each implementation.
pytestmark = pytest.mark.l1

NO_SYNC = CacheConfig(sync=False)


def user(i: int | str, **kw: Any) -> User:
    return User(id=f"u{i}", account_id="acc1", email=f"u{i}@x.io", username=f"user{i}",
                extension=f"{100 + int(str(i).strip('x') or 0)}", **kw)


async def test_hiredis_parser_in_use(cache: CallableCache) -> None:
    assert hiredis_available()
    pool = cache.remote.pool_for("cal:users")
    c = await pool.get_connection()
    try:
        assert "Hiredis" in type(c._parser).__name__
    finally:
        await pool.release(c)


async def test_user_miss_fill_hit(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_user(user(1, name="One"))
    cache.local["users"].invalidate_all()
    reset_stats(raw)
    got = await cache.get_user_by_id("u1")
    assert got is not None and got.name == "One"
    assert calls(raw, "hget") == 1
    again = await cache.get_user_by_id("u1")
    assert again is got  # the same frozen object, from L1
    assert calls(raw, "hget") == 1
    assert cache.local["users"].stats()["hits"] >= 1
    assert await cache.get_user("u1") is got


async def test_missing_entity_is_none(cache: CallableCache) -> None:
    assert await cache.get_user_by_id("nobody") is None
    assert await cache.get_region("nowhere") is None
    assert await cache.get_device("acc1", "nothing") is None
    assert await cache.get_user_by_ident("ghost@x.io") is None


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("get_user_by_id", ("u:1",), "user_id"),
        ("get_user_by_id", ("",), "user_id"),
        ("get_user_by_id", (42,), "user_id"),
        ("get_user_by_id", (["u1"],), "user_id"),
        ("get_region", ("r*",), "region_id"),
        ("get_account", ("a b",), "account_id"),
        ("get_proxy", ("p{1}",), "proxy_id"),
        ("get_device", ("acc:1", "d1"), "account_id"),
        ("get_device", ("acc1", "d?"), "device_id"),
        ("get_devices", ("acc]",), "account_id"),
        ("get_users_batch", (["u1", "u:2"],), "ids[1]"),
        ("get_users_batch", (["u1", ["u2"]],), "ids[1]"),  # unhashable
        ("get_users_batch", (["u1", "u1", 7],), "ids[2]"),
        ("get_devices_batch", ("acc:1", ["d1"]), "account_id"),
        ("get_devices_batch", ("acc1", ["d1", "d 2"]), "ids[1]"),
        ("get_users_batch", ("u1",), "ids"),
        ("get_user_by_ident", ("",), "ident"),
        ("get_device_by_ident", ("a*", "mac"), "account_id"),
        ("delete_user", ("u\n",), "user_id"),
        ("update_user", ("u1",), "changes"),
        ("delete_device", ("acc1", "d\x00"), "device_id"),
    ],
)
async def test_bad_ids_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)


async def test_bad_id_after_l1_hits_names_its_position(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_user(user(1))
    assert await cache.get_user_by_id("u1") is not None  # in L1
    reset_stats(raw)
    with pytest.raises(ValidationError) as info:
        await cache.get_users_batch(["u1", "u2", "u1", "u*4"])
    assert info.value.argument == "ids[3]"
    assert calls(raw, "hmget") == 0


async def test_set_validates_entity_type_and_owner(cache: CallableCache, raw: redis.Redis) -> None:
    with pytest.raises(ValidationError):
        await cache.set_user(Region(id="r1"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as info:
        await cache.set_device("acc1", Device(id="d1", account_id="acc2"))
    assert info.value.argument == "account_id"
    with pytest.raises(ValidationError):
        await cache.set_user(User(id="bad:id"))
    assert data_keys(raw) == []


async def test_every_cache_first_entity(cache: CallableCache, raw: redis.Redis) -> None:
    r = await cache.set_region(Region(id="r1", code="euw", name="EU West"))
    p = await cache.set_proxy(Proxy(id="p1", region_id="r1", host="sip1"))
    a = await cache.set_account(Account(id="acc1", domain="acme.io", code="ACME"))
    d = await cache.set_device("acc1", Device(id="d1", sip_username="sip-d1", mac="aa:bb"))
    assert d.account_id == "acc1"
    cache.local.flush_all()
    assert await cache.get_region("r1") == r
    assert await cache.get_region_by_ident("euw") == r
    assert await cache.get_region_by_ident("EU West") == r
    assert await cache.get_proxy("p1") == p
    assert await cache.get_account("acc1") == a
    assert await cache.get_account_by_ident("acme.io") == a
    assert await cache.get_device("acc1", "d1") == d
    assert await cache.get_device_by_ident("acc1", "aa:bb") == d
    assert await cache.get_device_by_ident("acc2", "aa:bb") is None
    assert await cache.get_regions() == [r]
    assert await cache.get_proxies() == [p]
    assert await cache.get_accounts() == [a]
    assert await cache.get_devices("acc1") == [d]
    assert await cache.get_devices("acc2") == []
    assert await cache.get_proxies_batch(["p1", "p2"]) == [p, None]
    assert await cache.get_regions_batch(["r1"]) == [r]
    assert await cache.get_accounts_batch(["acc1"]) == [a]
    assert await cache.get_devices_batch("acc1", ["d1", "d1"]) == [d, d]
    # stored exactly as the wire format says
    assert raw.hget((K.account("acc1") + "device:idents"), "aa:bb") == b"d1"
    assert msgspec.json.decode(raw.hget("cal:regions", "r1"))["code"] == "euw"
    assert raw.hget(K.REGION_IDENTS, "euw") == b"r1"
    for method, args in [("delete_region", ("r1",)), ("delete_proxy", ("p1",)),
                         ("delete_account", ("acc1",)), ("delete_device", ("acc1", "d1"))]:
        assert await getattr(cache, method)(*args) is True
        assert await getattr(cache, method)(*args) is False
    assert await cache.get_region("r1") is None and await cache.get_device("acc1", "d1") is None
    assert await cache.get_region_by_ident("euw") is None
    assert raw.hlen(K.REGION_IDENTS) == 0 and raw.hlen(K.account("acc1") + "device:idents") == 0


async def test_idents_follow_renames(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_user(user(1))
    assert (await cache.get_user_by_ident("u1@x.io")).id == "u1"  # type: ignore[union-attr]
    await cache.update_user("u1", email="new@x.io")
    assert raw.hget(K.USER_IDENTS, "u1@x.io") is None
    assert raw.hget(K.USER_IDENTS, "new@x.io") == b"u1"
    assert await cache.get_user_by_ident("u1@x.io") is None
    assert (await cache.get_user_by_ident("new@x.io")).id == "u1"  # type: ignore[union-attr]
    # An ident taken over by another user is not removed when the first one changes.
    await cache.set_user(User(id="u2", email="shared@x.io"))
    await cache.set_user(User(id="u3", email="shared@x.io"))
    await cache.update_user("u2", email="other@x.io")
    assert raw.hget(K.USER_IDENTS, "shared@x.io") == b"u3"
    assert (await cache.get_user_by_ident("shared@x.io")).id == "u3"  # type: ignore[union-attr]
    # account scoping on a global ident
    assert await cache.get_user_by_ident("new@x.io", account_id="acc1") is not None
    assert await cache.get_user_by_ident("new@x.io", account_id="acc2") is None


async def test_stale_cached_ident_is_verified(make_cache: Any, raw: redis.Redis) -> None:
    a = await make_cache(NO_SYNC)
    b = await make_cache(NO_SYNC)
    await a.set_user(user(1))
    assert (await b.get_user_by_ident("u1@x.io")).id == "u1"
    await a.update_user("u1", email="moved@x.io")
    b.local["users"].invalidate("u1")  # B's entity expires; its ident entry has not
    assert await b.get_user_by_ident("u1@x.io") is None


async def test_batch_edge_cases(cache: CallableCache, raw: redis.Redis) -> None:
    assert await cache.get_users_batch([]) == []
    for i in range(5):
        await cache.set_user(user(i))
    cache.local.flush_all()
    reset_stats(raw)
    got = await cache.get_users_batch(["u3", "missing", "u1", "u3", "u0"])
    assert [u.id if u else None for u in got] == ["u3", None, "u1", "u3", "u0"]
    assert calls(raw, "hmget") == 1 and calls(raw, "hget") == 0
    # now u0,u1,u3 are in L1: only u2 and u4 go to Redis, still one round trip
    got = await cache.get_users_batch(["u0", "u1", "u2", "u3", "u4"])
    assert [u.id for u in got] == ["u0", "u1", "u2", "u3", "u4"]  # type: ignore[union-attr]
    assert calls(raw, "hmget") == 2
    assert (await cache.get_users_batch(["u4"]))[0].id == "u4"  # type: ignore[union-attr]
    assert calls(raw, "hmget") == 2  # all hits: no round trip


async def test_batch_hits_duplicates_and_missing_together(cache: CallableCache, raw: redis.Redis) -> None:
    for i in range(4):
        await cache.set_user(user(i))
    cache.local.flush_all()
    await cache.get_user_by_id("u0")  # u0 in L1
    reset_stats(raw)
    ids = ["u2", "u0", "gone", "u2", "u1", "gone", "u0", "u3"]
    got = await cache.get_users_batch(ids)
    assert [u.id if u else None for u in got] == ["u2", "u0", None, "u2", "u1", None, "u0", "u3"]
    assert got[0] is got[3]  # one decode per id, shared
    assert calls(raw, "hmget") == 1 and calls(raw, "hget") == 0
    assert len(cache._users.flights) == 0
    l1_keys = cache.local["users"].keys()  # ident entries are tuples
    assert sorted(k for k in l1_keys if isinstance(k, str)) == ["u0", "u1", "u2", "u3"]


async def test_scoped_batch_keeps_accounts_apart(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_device("acc1", Device(id="d1", name="one"))
    await cache.set_device("acc2", Device(id="d1", name="other account"))
    await cache.set_device("acc1", Device(id="d2", name="two"))
    cache.local.flush_all()
    assert (await cache.get_device_by_id("acc1", "d2")).name == "two"  # type: ignore[union-attr]
    got = await cache.get_devices_batch("acc1", ["d1", "d2", "d1", "d3"])
    assert [d.name if d else None for d in got] == ["one", "two", "one", None]
    got = await cache.get_devices_batch("acc2", ["d2", "d1"])
    assert [d.name if d else None for d in got] == [None, "other account"]
    reset_stats(raw)
    assert [d.name for d in await cache.get_devices_batch("acc1", ["d1", "d2"])] == ["one", "two"]  # type: ignore[union-attr]
    assert calls(raw, "hmget") == 0  # all from L1, under the right account


async def test_single_get_joins_an_in_flight_batch(cache: CallableCache, raw: redis.Redis) -> None:
    for i in range(3):
        await cache.set_user(user(i))
    cache.local.flush_all()
    reset_stats(raw)
    batch = asyncio.ensure_future(cache.get_users_batch(["u0", "u1", "u2", "gone"]))
    await asyncio.sleep(0)  # the batch's HMGET is in flight
    one, gone = await asyncio.gather(cache.get_user_by_id("u1"), cache.get_user_by_id("gone"))
    assert one is not None and one.id == "u1" and gone is None
    assert [u.id if u else None for u in await batch] == ["u0", "u1", "u2", None]
    assert calls(raw, "hmget") == 1 and calls(raw, "hget") == 0
    assert cache.stats()["single_flight_joins"] == 2


async def test_overlapping_batches_fetch_each_key_once(cache: CallableCache, raw: redis.Redis) -> None:
    for i in range(5):
        await cache.set_user(user(i))
    cache.local.flush_all()
    reset_stats(raw)
    first = asyncio.ensure_future(cache.get_users_batch(["u0", "u1", "u2"]))
    await asyncio.sleep(0)
    second = await cache.get_users_batch(["u4", "u2", "u3", "u1", "u4"])
    assert [u.id for u in second] == ["u4", "u2", "u3", "u1", "u4"]  # type: ignore[union-attr]
    assert [u.id for u in await first] == ["u0", "u1", "u2"]  # type: ignore[union-attr]
    assert calls(raw, "hmget") == 2
    assert cache.stats()["single_flight_joins"] == 2  # u2 and u1 came from the first batch
    assert len(cache._users.flights) == 0
    assert len(cache.local["users"]) == 5


async def test_batch_10k(cache: CallableCache, raw: redis.Redis) -> None:
    pipe = raw.pipeline()
    for i in range(10_000):
        pipe.hset("cal:users", f"u{i}", msgspec.json.encode({"id": f"u{i}", "name": str(i)}))
    pipe.execute()
    reset_stats(raw)
    ids = [f"u{i}" for i in range(10_000)] + ["gone"]
    trips = cache.remote.round_trips
    got = await cache.get_users_batch(ids)
    # chunks of 1,000 ids (a huge HMGET would hold the server), pipelined in one round trip
    assert calls(raw, "hmget") == 11 and cache.remote.round_trips - trips == 1
    assert got[-1] is None and all(u is not None and u.name == str(i) for i, u in enumerate(got[:-1]))
    assert len(cache.local["users"]) == 10_000


async def test_single_flight_one_hget(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_user(user(1))
    cache.local.flush_all()
    reset_stats(raw)
    results = await asyncio.gather(*(cache.get_user_by_id("u1") for _ in range(100)))
    assert all(r is not None and r.id == "u1" for r in results)
    assert calls(raw, "hget") == 1
    assert cache.stats()["single_flight_joins"] == 99


async def test_batch_joins_in_flight_loads(cache: CallableCache, raw: redis.Redis) -> None:
    for i in range(3):
        await cache.set_user(user(i))
    cache.local.flush_all()
    reset_stats(raw)
    single = asyncio.ensure_future(cache.get_user_by_id("u1"))
    await asyncio.sleep(0)  # the single get is now in flight
    batch = await cache.get_users_batch(["u0", "u1", "u2"])
    assert (await single).id == "u1"  # type: ignore[union-attr]
    assert [u.id for u in batch] == ["u0", "u1", "u2"]  # type: ignore[union-attr]
    assert calls(raw, "hget") == 1 and calls(raw, "hmget") == 1


async def test_cancelled_leader_does_not_strand_joiners(
    cache: CallableCache, raw: redis.Redis
) -> None:
    await cache.set_user(user(1))
    cache.local.flush_all()
    raw.execute_command("CLIENT", "PAUSE", 300)  # the leader's HGET waits on the server
    leader = asyncio.ensure_future(cache.get_user_by_id("u1"))
    await asyncio.sleep(0)
    joiner = asyncio.ensure_future(cache.get_user_by_id("u1"))
    await asyncio.sleep(0)
    leader.cancel()
    got = await joiner
    assert got is not None and got.id == "u1"
    # redis-py may finish an in-flight command despite the cancel; either outcome is fine,
    # what matters is that the joiner got its value.
    try:
        lead = await leader
    except asyncio.CancelledError:
        lead = None
    assert lead is None or lead.id == "u1"
    assert len(cache._users.flights) == 0


async def test_partial_update_keeps_unknown_fields(cache: CallableCache, raw: redis.Redis) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u1","name":"A","pager":"555","prefs":{"x":[1,2]}}')
    updated = await cache.update_user("u1", name="B", enabled=False)
    assert updated.name == "B" and updated.enabled is False
    stored = msgspec.json.decode(raw.hget("cal:users", "u1"))
    assert stored["pager"] == "555" and stored["prefs"] == {"x": [1, 2]} and stored["name"] == "B"
    # a full set keeps them too
    await cache.set_user(User(id="u1", name="C"))
    stored = msgspec.json.decode(raw.hget("cal:users", "u1"))
    assert stored["pager"] == "555" and stored["name"] == "C"


async def test_update_errors(cache: CallableCache) -> None:
    with pytest.raises(NotFoundError):
        await cache.update_user("nobody", name="x")
    await cache.set_user(user(1))
    with pytest.raises(ValidationError, match="unknown"):
        await cache.update_user("u1", nonsense=1)
    with pytest.raises(ValidationError):
        await cache.update_user("u1", id="u2")
    with pytest.raises(ValidationError, match="enabled"):  # wrong type: refused before I/O
        await cache.update_user("u1", enabled="yes")
    assert (await cache.get_user_by_id("u1")).enabled is True  # type: ignore[union-attr]


async def test_concurrent_updates_are_not_lost(make_cache: Any, raw: redis.Redis) -> None:
    a = await make_cache(NO_SYNC)
    b = await make_cache(NO_SYNC)
    raw.hset("cal:users", "u1", b'{"id":"u1"}')
    await asyncio.gather(
        *(a.update_user("u1", name=f"n{i}") for i in range(20)),
        *(b.update_user("u1", extension=f"{i}") for i in range(20)),
        *(a.update_user("u1", role=f"r{i}") for i in range(20)),
    )
    stored = msgspec.json.decode(raw.hget("cal:users", "u1"))
    assert stored["name"].startswith("n") and stored["extension"] != "" and stored["role"].startswith("r")


async def test_corrupt_value_names_the_key(cache: CallableCache, raw: redis.Redis) -> None:
    raw.hset("cal:users", "u1", b"{broken")
    with pytest.raises(SerializationError) as info:
        await cache.get_user_by_id("u1")
    assert info.value.key == "cal:users" and info.value.field == "u1"
    with pytest.raises(SerializationError):
        await cache.get_users_batch(["u1"])
    assert "u1" not in cache.local["users"]


async def test_write_visible_to_other_instance_after_ttl_without_sync(
    make_cache: Any, raw: redis.Redis
) -> None:
    cfg = CacheConfig(sync=False).with_budget("users", max_bytes=1 << 20, ttl=0.2)
    a = await make_cache(cfg)
    b = await make_cache(cfg)
    await a.set_user(user(1, name="old"))
    assert (await b.get_user_by_id("u1")).name == "old"  # type: ignore[union-attr]
    await a.update_user("u1", name="new")
    assert (await a.get_user_by_id("u1")).name == "new"  # type: ignore[union-attr]
    assert (await b.get_user_by_id("u1")).name == "old"  # type: ignore[union-attr]  # B's L1
    await asyncio.sleep(0.3)
    assert (await b.get_user_by_id("u1")).name == "new"  # type: ignore[union-attr]


async def test_redis_down_clear_error_and_l1_unpoisoned(l1_impl: str) -> None:
    server = EmbeddedRedis().start()
    cache = await CallableCache.connect(
        server.url, config=CacheConfig(sync=False, connect_timeout=0.5, socket_timeout=0.5,
                                       read_retries=1)
    )
    try:
        await cache.set_user(user(1, name="v1"))
        assert (await cache.get_user_by_id("u1")).name == "v1"  # type: ignore[union-attr]
        server.stop()
        with pytest.raises(ConnectionError) as info:
            await cache.set_user(user(1, name="v2"))
        assert info.value.__cause__ is not None
        assert "u1" not in cache.local["users"]  # neither v2 nor the possibly-stale v1
        with pytest.raises(ConnectionError):
            await cache.get_user_by_id("u1")
        with pytest.raises(ConnectionError):
            await cache.get_users_batch(["u1", "u2"])
        with pytest.raises(ConnectionError):
            await cache.update_user("u1", name="v3")
        assert len(cache.local["users"]) == 0
        assert cache.stats()["l2"]["errors"] >= 4
    finally:
        await cache.close()
        server.stop()


async def test_close_is_idempotent_and_context_manager(redis_url: str, l1_impl: str) -> None:
    async with await CallableCache.connect(redis_url) as cache:
        assert await cache.get_user_by_id("u1") is None
        assert cache.redis_connection() is cache.remote.client
    assert cache.closed
    await cache.close()


async def test_embedded_cache() -> None:
    async with CallableCache.embedded() as cache:
        await cache.set_user(User(id="u1", email="a@b.c"))
        assert (await cache.get_user_by_ident("a@b.c")).id == "u1"  # type: ignore[union-attr]


async def test_local_cache_off(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(CacheConfig(local_cache=False, sync=False))
    await cache.set_user(user(1))
    reset_stats(raw)
    await cache.get_user_by_id("u1")
    await cache.get_user_by_id("u1")
    assert calls(raw, "hget") == 2


async def test_stats_shape(cache: CallableCache) -> None:
    await cache.get_user_by_id("u1")
    st = cache.stats()
    assert set(st) >= {"l1", "l2", "single_flight_joins", "l1_implementation"}
    assert st["l1"]["users"]["misses"] == 1 and st["l2"]["round_trips"] >= 2
