"""Edge correctness of the core: validation before I/O, stored objects that are not the
one asked for, a closed cache, another event loop, error mapping, retries and fences.

Each test names one guarantee and fails when it is removed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    CacheConfig,
    CallableCache,
    CalRedisError,
    ClosedError,
    ConnectionError,
    Device,
    Event,
    SerializationError,
    User,
    ValidationError,
)
from redis_stats import assert_rejected_before_io, calls, reset_stats
from waiting import until

# Fills, fences and the L1 gate: each implementation.
pytestmark = pytest.mark.l1


# -- 1. validation before any I/O ---------------------------------------------------------
async def test_set_with_a_wrongly_typed_field_sends_nothing(
    cache: CallableCache, raw: redis.Redis
) -> None:
    bad = User(id="u1", name=5)  # type: ignore[arg-type]  # msgspec does not check at init
    await assert_rejected_before_io(cache, raw, "set_user", (bad,), "user.name")
    dev = Device(id="d1", mac=7)  # type: ignore[arg-type]
    await assert_rejected_before_io(cache, raw, "set_device", ("acc1", dev), "device.mac")


async def test_update_with_a_wrong_type_or_unknown_field_sends_nothing(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u1","name":"A"}')
    await assert_rejected_before_io(cache, raw, "update_user", ("u1",), "changes")  # nothing

    async def update(**changes: Any) -> None:
        await cache.update_user("u1", **changes)

    reset_stats(raw)
    with pytest.raises(ValidationError) as info:
        await update(name=5)
    assert info.value.argument == "name"
    with pytest.raises(ValidationError) as info:
        await update(nonsense="x")
    assert info.value.argument == "nonsense"
    assert calls(raw, "hget") == calls(raw, "evalsha") == calls(raw, "eval") == 0
    assert msgspec.json.decode(raw.hget("cal:users", "u1")) == {"id": "u1", "name": "A"}


async def test_update_of_a_partial_record_writes_the_full_object(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u1","name":"A","pager":"555"}')
    got = await cache.update_user("u1", name="B")
    stored = msgspec.json.decode(raw.hget("cal:users", "u1"))
    assert stored["pager"] == "555" and stored["name"] == "B"
    assert set(User.__struct_fields__) <= set(stored)  # every field of the model
    assert msgspec.json.decode(msgspec.json.encode(got)).items() <= stored.items()


# -- 3. a stored object that is not the one asked for ---------------------------------------
async def test_stored_object_with_another_id_is_refused_and_not_cached(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u2","name":"Two"}')
    with pytest.raises(SerializationError) as info:
        await cache.get_user_by_id("u1")
    assert info.value.key == "cal:users" and info.value.field == "u1"
    with pytest.raises(SerializationError):
        await cache.get_users_batch(["u1"])
    assert cache.local["users"].peek("u1") is None and len(cache.local["users"]) == 0


async def test_stored_device_of_another_account_is_refused(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.hset("cal:account:acc1:devices", "d1", b'{"id":"d1","account_id":"acc2"}')
    with pytest.raises(SerializationError) as info:
        await cache.get_device("acc1", "d1")
    assert info.value.field == "d1"
    with pytest.raises(SerializationError):
        await cache.get_devices_batch("acc1", ["d1"])
    with pytest.raises(SerializationError):
        await cache.get_devices("acc1")
    assert len(cache.local["devices"]) == 0


# -- 4. a closed cache, another event loop ---------------------------------------------------
async def test_closed_cache_raises_closed_error_everywhere(redis_url: str) -> None:
    cache = await CallableCache.connect(redis_url)
    await cache.set_user(User(id="u1", name="One"))
    assert await cache.get_user_by_id("u1") is not None  # in L1
    await cache.close()
    calls_: list[Any] = [
        cache.get_user_by_id("u1"),  # was an L1 hit: L1 is flushed at close
        cache.get_users_batch(["u1"]),
        cache.get_user_by_ident("x@y"),
        cache.set_user(User(id="u2")),
        cache.update_user("u1", name="x"),
        cache.delete_user("u1"),
        cache.session_get("acc1", "s1"),
        cache.queue_pop("acc1", "q"),
        cache.get_trunk_account("10.0.0.1"),
        cache.get_flow_state("acc1", "f1"),
        cache.publish_account_event("acc1", Event(type="X", id="1")),
    ]
    for call in calls_:
        with pytest.raises(ClosedError):
            await call
    with pytest.raises(ClosedError):
        cache.events()
    with pytest.raises(ClosedError):
        cache.redis_connection()
    assert isinstance(ClosedError("x"), CalRedisError)


async def test_another_event_loop_is_refused(cache: CallableCache) -> None:
    errors: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(cache.get_user_by_id("u-missing"))
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], CalRedisError)
    assert "event loop" in str(errors[0])
    assert await cache.get_user_by_id("u-missing") is None  # its own loop still works


# -- 10. errors, retries and fences -------------------------------------------------------
async def test_redis_error_reply_comes_out_as_cal_redis_error(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.set("cal:users", "not a hash")
    with pytest.raises(CalRedisError) as info:
        await cache.get_user_by_id("u1")
    assert not isinstance(info.value, redis.exceptions.RedisError)
    assert "WRONGTYPE" in str(info.value)
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(CalRedisError) as info:
        await cache.set_user(User(id="u1"))
    assert not isinstance(info.value, redis.exceptions.RedisError)


async def test_a_read_retry_that_succeeds_is_counted(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.hset("cal:users", "u1", b'{"id":"u1","name":"One"}')
    assert await cache.session_get("acc1", "s0") is None  # a pooled connection exists
    before = cache.stats()["l2"]
    raw.client_kill_filter(_type="normal", skipme=True)  # the pooled connection dies
    got = await cache.get_user_by_id("u1")
    after = cache.stats()["l2"]
    assert got is not None and got.name == "One"
    assert after["retries"] - before["retries"] == 1
    assert after["errors"] == before["errors"]


async def test_a_pop_whose_reply_is_lost_raises_and_is_not_retried(
    make_cache: Any, raw: redis.Redis
) -> None:
    cache = await make_cache(CacheConfig(socket_timeout=0.15, sync=False))
    for i in range(5):
        await cache.queue_add("acc1", "q", f"item{i}")
    reset_stats(raw)
    # Write commands wait 250 ms: the pop times out at 150 ms, its outcome unknown. A
    # retry (10 ms later) would be answered when the pause ends and pop an item.
    raw.client_pause(250, all=False)
    with pytest.raises(ConnectionError):  # cal_redis.TimeoutError is a ConnectionError
        await cache.queue_pop("acc1", "q")
    await asyncio.sleep(0.4)  # the pause is over: whatever was sent has run
    assert calls(raw, "zpopmin") <= 1  # one attempt, never a retry
    assert raw.zcard("cal:account:acc1:queue:q") >= 4


async def test_batch_validation_rejects_a_long_multibyte_id(
    cache: CallableCache, raw: redis.Redis
) -> None:
    long_id = "é" * 129  # 129 characters, 258 UTF-8 bytes
    await assert_rejected_before_io(cache, raw, "get_users_batch", (["u1", long_id],), "ids[1]")


async def test_trunk_ip_fill_racing_a_remap_event_is_fenced(
    cache: CallableCache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw.set("cal:trunk:10.0.0.9", "acc1")
    answered, release = asyncio.Event(), asyncio.Event()
    get = cache.remote.cmd.get

    async def held_get(*args: Any) -> Any:
        value = await get(*args)
        answered.set()  # the server answered; the fill has not happened yet
        await release.wait()
        return value

    monkeypatch.setattr(cache.remote.cmd, "get", held_get)
    task = asyncio.create_task(cache.get_trunk_account("10.0.0.9"))
    await answered.wait()
    # The remap lands between the server's answer ("acc1") and the fill:
    raw.set("cal:trunk:10.0.0.9", "acc2")
    cache._sync.dispatcher.on_message(
        b"cal:events", b'{"type":"TrunkIpUpdate","id":"10.0.0.9","origin":"other"}'
    )
    release.set()
    await task
    assert cache.local["trunks_ip"].peek("10.0.0.9") in (None, "acc2")  # never the old owner
    assert await cache.get_trunk_account("10.0.0.9") == "acc2"


async def test_a_read_begun_degraded_never_fills_after_resubscribing(
    make_cache: Any, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = await make_cache(CacheConfig(heartbeat_interval=0.2))
    raw.hset("cal:users", "u1", b'{"id":"u1","name":"One"}')
    release = asyncio.Event()
    entered = asyncio.Event()
    hget = cache.remote.cmd.hget

    async def held_hget(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await hget(*args)

    raw.client_kill_filter(_type="pubsub")
    await until(lambda: cache.sync_state.state == "degraded", what="degraded")
    monkeypatch.setattr(cache.remote.cmd, "hget", held_hget)
    task = asyncio.create_task(cache.get_user_by_id("u1"))
    await entered.wait()  # the read began while degraded
    await until(lambda: cache.sync_state.state == "connected", what="resubscribed")
    release.set()
    got = await task
    assert got is not None and got.name == "One"
    # Events published before the subscriptions were confirmed may be missing from
    # what the read saw: the flush at confirmation fences this fill out.
    assert cache.local["users"].peek("u1") is None
    monkeypatch.undo()
    assert await cache.get_user_by_id("u1") is not None
    assert cache.local["users"].peek("u1") is not None  # the next read fills again


async def test_a_send_that_can_block_stays_bounded_in_time() -> None:
    """Small sends skip redis-py's per-send wait_for (they cannot block); a send larger
    than the write buffer's high-water mark to a server that stopped reading keeps it."""
    import os
    import signal

    from cal_redis.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        cache = await CallableCache.connect(
            server.url, config=CacheConfig(socket_timeout=0.3, sync=False, read_retries=0)
        )
        try:
            await cache.set_user(User(id="u1", name="small"))  # the pooled connection exists
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)  # the server stops reading
            try:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(ConnectionError):  # cal_redis.TimeoutError
                    await asyncio.wait_for(
                        cache.set_user(User(id="u1", name="x" * (8 << 20))), 10
                    )
                assert loop.time() - t0 < 5
            finally:
                os.kill(server.pid, signal.SIGCONT)
        finally:
            await cache.close()
