"""Flow states, cache-first (L1 namespace "flow_states" over Redis strings with EXPIRE)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import (
    CacheConfig,
    CallableCache,
    ConnectionError,
    Event,
    FlowState,
    SerializationError,
    ValidationError,
)
from cal_redis.codec import decode_event
from keyspace import K as KEYS
from redis_stats import assert_rejected_before_io, calls, pause, reset_stats, server_url, total_calls

# Flow states are cache-first: each L1 implementation.
pytestmark = pytest.mark.l1

A = "acc1"
K = (KEYS.account(A) + "flow_state:f1")


async def test_set_then_get_from_l1(cache: CallableCache, raw: redis.Redis) -> None:
    st = await cache.set_flow_state(A, FlowState(id="f1", state="ivr", data={"digits": "12"}))
    assert st.account_id == A
    assert 4 * 3600_000 - 5000 < raw.pttl(K) <= 4 * 3600_000
    assert json.loads(raw.get(K))["data"] == {"digits": "12"}
    reset_stats(raw)
    assert await cache.get_flow_state(A, "f1") is st  # from L1, no command
    assert total_calls(raw) == 0


async def test_miss_fills_l1_then_hits(cache: CallableCache, raw: redis.Redis) -> None:
    raw.set(K, json.dumps({"id": "f1", "account_id": A, "state": "queue"}), px=60_000)
    reset_stats(raw)
    got = await cache.get_flow_state(A, "f1")
    assert got is not None and got.state == "queue"
    assert calls(raw, "get") == 1
    assert await cache.get_flow_state(A, "f1") is got
    assert calls(raw, "get") == 1
    assert cache.local["flow_states"].stats()["hits"] >= 1
    assert await cache.get_flow_state(A, "missing") is None
    assert await cache.get_flow_state("acc2", "f1") is None  # other account, other key


async def test_l1_never_outlives_redis_ttl(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_flow_state(A, FlowState(id="f1", state="x"), ttl=0.2)
    assert 0 < raw.pttl(K) <= 200
    raw.set((KEYS.account("acc1") + "flow_state:f2"), json.dumps({"id": "f2"}), px=200)
    assert await cache.get_flow_state(A, "f2") is not None  # filled with the key's TTL
    await asyncio.sleep(0.3)
    assert await cache.get_flow_state(A, "f1") is None
    assert await cache.get_flow_state(A, "f2") is None


async def test_delete(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_flow_state(A, FlowState(id="f1"))
    assert await cache.delete_flow_state(A, "f1") is True
    assert await cache.get_flow_state(A, "f1") is None
    assert raw.exists(K) == 0
    assert await cache.delete_flow_state(A, "f1") is False


async def test_foreign_fields_kept(cache: CallableCache, raw: redis.Redis) -> None:
    raw.set(K, json.dumps({"id": "f1", "account_id": A, "engine_rev": 7}))
    await cache.set_flow_state(A, FlowState(id="f1", state="done"))
    doc = json.loads(raw.get(K))
    assert doc["engine_rev"] == 7 and doc["state"] == "done"


async def test_writes_publish_invalidation_events(
    make_cache: Any, redis_url: str, raw: redis.Redis
) -> None:
    a = await make_cache(CacheConfig(sync=False))
    b = await make_cache(CacheConfig(sync=False))
    # The node that runs the account's scripts (cluster pub/sub is also per node).
    client = redis.Redis.from_url(server_url(raw, redis_url, KEYS.account(A) + "events"))
    pubsub = client.pubsub()
    pubsub.subscribe(KEYS.account(A) + "events")
    pubsub.get_message(timeout=1)  # subscribe confirmation
    await a.set_flow_state(A, FlowState(id="f1", state="one"))
    assert (await b.get_flow_state(A, "f1")).state == "one"  # type: ignore[union-attr]
    await a.set_flow_state(A, FlowState(id="f1", state="two"))
    await a.delete_flow_state(A, "f1")
    events: list[Event] = []
    for _ in range(3):
        msg = pubsub.get_message(timeout=1)
        assert msg is not None
        events.append(decode_event(msg["data"], channel=msg["channel"].decode()))
    pubsub.close()
    client.close()
    assert [e.type for e in events] == ["FlowStateUpdate", "FlowStateUpdate", "FlowStateDelete"]
    assert all(e.id == "f1" and e.account_id == A and e.origin == a.instance_id for e in events)
    # B still holds "one"; applying the event (as its subscriber does) drops it
    assert (await b.get_flow_state(A, "f1")).state == "one"  # type: ignore[union-attr]
    assert a.apply_flow_state_event(events[1], A) == "echo"
    assert b.apply_flow_state_event(events[1], A) == "invalidate"
    assert await b.get_flow_state(A, "f1") is None
    assert b.apply_flow_state_event(Event(type="FlowStateSync"), A) == "sync"


async def test_failed_write_leaves_l1_without_the_value(make_cache: Any, raw: redis.Redis) -> None:
    cache = await make_cache(CacheConfig(socket_timeout=0.15))
    old = await cache.set_flow_state(A, FlowState(id="f1", state="old"))
    l1 = cache.local["flow_states"]
    assert l1.peek((A, "f1")) is old
    pause(raw, 400)  # the write times out: its outcome is unknown
    with pytest.raises(ConnectionError):  # cal_redis.TimeoutError is a ConnectionError
        await cache.set_flow_state(A, FlowState(id="f1", state="new"))
    assert l1.peek((A, "f1")) is None
    await asyncio.sleep(0.3)
    got = await cache.get_flow_state(A, "f1")  # whatever Redis holds, never a guess
    assert got is not None and got.state == json.loads(raw.get(K))["state"]


async def test_fill_is_fenced_against_a_concurrent_write(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.set(K, json.dumps({"id": "f1", "state": "stale"}))
    l1 = cache.local["flow_states"]
    token = l1.begin_fill()  # a read in flight took its token before the write
    try:
        new = await cache.set_flow_state(A, FlowState(id="f1", state="fresh"))
        assert not l1.set_if_fresh((A, "f1"), FlowState(id="f1", state="stale"), 100, token)
    finally:
        l1.end_fill()
    assert await cache.get_flow_state(A, "f1") is new


async def test_a_fill_overtaken_by_an_event_reads_again(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.set(K, json.dumps({"id": "f1", "state": "s1"}))
    l1 = cache.local["flow_states"]
    reset_stats(raw)
    task = asyncio.create_task(cache.get_flow_state(A, "f1"))
    for _ in range(1000):  # until the task is inside its read
        if l1.inflight:
            break
        await asyncio.sleep(0)
    l1.invalidate((A, "f1"))  # what an event applied during the read does
    got = await task
    assert got is not None and got.state == "s1"
    assert calls(raw, "get") == 2  # the fenced fill was refused, the second one stored
    assert l1.peek((A, "f1")) == got


async def test_events_keep_an_equal_entry_and_drop_a_different_one(
    make_cache: Any, raw: redis.Redis
) -> None:
    a = await make_cache(CacheConfig(sync=False))
    b = await make_cache(CacheConfig(sync=False))
    written = await a.set_flow_state(A, FlowState(id="f1", state="one"))
    cached = await b.get_flow_state(A, "f1")
    same = Event(type="FlowStateUpdate", id="f1", account_id=A, origin=a.instance_id,
                 data=msgspec.Raw(msgspec.json.encode(written)))
    assert b.apply_flow_state_event(same, A) == "unchanged"
    assert b.local["flow_states"].peek((A, "f1")) is cached
    other = msgspec.structs.replace(same, data=msgspec.Raw(b'{"id":"f1","state":"two"}'))
    assert b.apply_flow_state_event(other, A) == "invalidate"
    assert b.local["flow_states"].peek((A, "f1")) is None
    with pytest.raises(SerializationError):
        b.apply_flow_state_event(
            msgspec.structs.replace(same, data=msgspec.Raw(b'{"id":"f2"}')), A)
    with pytest.raises(ValidationError):
        b.apply_flow_state_event(same, None)


async def test_no_fill_while_sync_degraded(cache: CallableCache, raw: redis.Redis) -> None:
    raw.set(K, json.dumps({"id": "f1"}))
    cache._ctx.gate.fill_ok = False
    assert await cache.get_flow_state(A, "f1") is not None
    await cache.set_flow_state(A, FlowState(id="f1", state="x"))
    assert cache.local["flow_states"].peek((A, "f1")) is None


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("get_flow_state", (A, "f:1"), "flow_id"),
        ("get_flow_state", ("a b", "f1"), "account_id"),
        ("get_flow_state", (A, ["f1"]), "flow_id"),
        ("set_flow_state", (A, FlowState(id="f*")), "flow_id"),
        ("set_flow_state", (A, FlowState(id="f1", account_id="acc2")), "account_id"),
        ("set_flow_state", (A, FlowState(id="f1"), 0), "ttl"),
        ("set_flow_state", (A, "state"), "state"),
        ("delete_flow_state", (A, ""), "flow_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
