"""Agent status and presence sets over a real redis-server, including concurrent flips."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from cal_redis import AgentState, AgentStatus, CallableCache, ValidationError
from keyspace import K
from redis_stats import assert_rejected_before_io, data_keys, server_url

A = "acc1"
P = K.account(A)


def status(user: str = "u1", **kw: Any) -> AgentStatus:
    return AgentStatus(user_id=user, **kw)


def memberships(raw: redis.Redis, user: str = "u1") -> tuple[bool, bool, bool]:
    return (
        bool(raw.sismember(P + "agents:registered", user)),
        bool(raw.sismember(P + "agents:available", user)),
        bool(raw.sismember(P + "agents:connected", user)),
    )


def test_one_operation_two_names() -> None:
    assert CallableCache.agent_status_set is CallableCache.set_agent_status


async def test_set_get_and_sets_follow_status(cache: CallableCache, raw: redis.Redis) -> None:
    rt = cache.remote.round_trips
    out = await cache.set_agent_status(A, status(name="Ann", status=AgentState.AVAILABLE,
                                                 registered=True, connected=True))
    assert cache.remote.round_trips - rt == 1
    assert out.account_id == A and out.updated_at > 0
    assert await cache.get_agent_status(A, "u1") == out
    assert json.loads(raw.get(P + "agent:status:u1"))["status"] == "available"
    assert memberships(raw) == (True, True, True)
    assert await cache.agents_get_available(A) == {"u1"}
    assert await cache.agents_get_registered(A) == {"u1"}
    assert await cache.agents_get_connected(A) == {"u1"}
    assert await cache.get_agent_names(A) == {"u1": "Ann"}
    await cache.agent_status_set(A, status(name="Ann", status=AgentState.BUSY, registered=True))
    assert memberships(raw) == (True, False, False)
    assert await cache.agents_get_available(A) == set()
    await cache.set_agent_status(A, status(status=AgentState.OFFLINE))
    assert memberships(raw) == (False, False, False)
    assert await cache.get_agent_names(A) == {}  # the map mirrors the (now empty) name


async def test_state_given_as_text_is_checked(cache: CallableCache, raw: redis.Redis) -> None:
    out = await cache.set_agent_status(A, status(status="available"))  # type: ignore[arg-type]
    assert out.status is AgentState.AVAILABLE and memberships(raw)[1]
    with pytest.raises(ValidationError) as info:
        await cache.set_agent_status(A, status(status="napping"))  # type: ignore[arg-type]
    assert info.value.argument == "status"
    with pytest.raises(ValidationError) as info:
        await cache.set_agent_status(A, status(registered="yes"))  # type: ignore[arg-type]
    assert info.value.argument == "status.registered"  # the field is named
    assert (await cache.get_agent_status(A, "u1")).status is AgentState.AVAILABLE  # type: ignore[union-attr]


async def test_foreign_fields_are_kept(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_agent_status(A, status(status=AgentState.AVAILABLE))
    doc = json.loads(raw.get(P + "agent:status:u1"))
    doc["skills"] = {"fr": 3, "en": [1, 2]}
    raw.set(P + "agent:status:u1", json.dumps(doc))
    await cache.set_agent_status(A, status(status=AgentState.AWAY, registered=True))
    doc = json.loads(raw.get(P + "agent:status:u1"))
    assert doc["skills"] == {"fr": 3, "en": [1, 2]} and doc["status"] == "away"
    assert memberships(raw) == (True, False, False)


async def test_missing_and_empty(cache: CallableCache) -> None:
    assert await cache.get_agent_status(A, "nobody") is None
    assert await cache.agents_get_available(A) == set()
    assert await cache.agents_get_registered(A) == set()
    assert await cache.agents_get_connected(A) == set()
    assert await cache.get_agent_names(A) == {}
    assert await cache.remove_agent(A, "nobody") is False


async def test_remove_agent(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_agent_status(A, status(name="Ann", status=AgentState.AVAILABLE,
                                           registered=True, connected=True))
    await cache.set_agent_status(A, status("u2", name="Bob", registered=True))
    rt = cache.remote.round_trips
    assert await cache.remove_agent(A, "u1") is True
    assert cache.remote.round_trips - rt == 1
    assert memberships(raw) == (False, False, False)
    assert await cache.get_agent_status(A, "u1") is None
    assert await cache.get_agent_names(A) == {"u2": "Bob"}
    assert await cache.agents_get_registered(A) == {"u2"}


async def test_account_must_match(cache: CallableCache, raw: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        await cache.set_agent_status(A, status(account_id="acc2"))
    assert info.value.argument == "account_id"
    with pytest.raises(ValidationError) as info:
        await cache.set_agent_status(A, {"user_id": "u1"})  # type: ignore[arg-type]
    assert info.value.argument == "status"
    assert data_keys(raw) == []
    await cache.set_agent_status(A, status(status=AgentState.AVAILABLE))
    assert await cache.agents_get_available("acc2") == set()
    assert await cache.get_agent_status("acc2", "u1") is None


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("set_agent_status", (A, AgentStatus(user_id="u:1")), "user_id"),
        ("set_agent_status", ("a*", AgentStatus(user_id="u1")), "account_id"),
        ("agent_status_set", (A, AgentStatus(user_id="")), "user_id"),
        ("get_agent_status", (A, "u 1"), "user_id"),
        ("get_agent_status", (None, "u1"), "account_id"),
        ("agents_get_available", ("a{b}",), "account_id"),
        ("agents_get_registered", ("",), "account_id"),
        ("agents_get_connected", ("x\ny",), "account_id"),
        ("get_agent_names", ("a?",), "account_id"),
        ("remove_agent", (A, "u]"), "user_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)


async def _snapshot(client: aioredis.Redis) -> tuple[dict[str, Any] | None, tuple[bool, ...], Any]:
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(P + "agent:status:u1")
        pipe.sismember(P + "agents:registered", "u1")
        pipe.sismember(P + "agents:available", "u1")
        pipe.sismember(P + "agents:connected", "u1")
        pipe.hget(P + "agents:by_user", "u1")
        raw, reg, avail, conn, name = await pipe.execute()
    doc = None if raw is None else json.loads(raw)
    return doc, (bool(reg), bool(avail), bool(conn)), name


def _consistent(doc: dict[str, Any] | None, sets: tuple[bool, ...], name: Any) -> bool:
    if doc is None:
        return sets == (False, False, False) and name is None
    # Read as the model does: the foreign document written before any flip (no status
    # fields) means offline, unregistered, disconnected, no name.
    want = (doc.get("registered", False), doc.get("status") == "available", doc.get("connected", False))
    want_name = doc["name"].encode() if doc.get("name") else None
    return sets == want and name == want_name


@pytest.mark.parametrize("foreign", [False, True], ids=["plain", "with-foreign-field"])
async def test_concurrent_flips_keep_sets_consistent(
    make_cache: Any, raw: redis.Redis, redis_url: str, foreign: bool
) -> None:
    caches = [await make_cache() for _ in range(3)]
    if foreign:
        raw.set(P + "agent:status:u1", json.dumps({"user_id": "u1", "skills": ["fr"]}))
    rng = random.Random(7)
    done = asyncio.Event()
    snapshots = 0

    async def flipper(i: int) -> None:
        cache = caches[i % 3]
        for _ in range(20):
            await cache.set_agent_status(A, AgentStatus(
                user_id="u1",
                name=rng.choice(["", "Ann", "Ann B."]),
                status=rng.choice(list(AgentState)),
                registered=rng.random() < 0.5,
                connected=rng.random() < 0.5,
            ))

    async def checker() -> None:
        nonlocal snapshots
        client = aioredis.Redis.from_url(server_url(raw, redis_url, P))
        try:
            while not done.is_set():
                snap = await _snapshot(client)
                assert _consistent(*snap), snap
                snapshots += 1
                await asyncio.sleep(0)
        finally:
            await client.aclose()

    check = asyncio.create_task(checker())
    await asyncio.gather(*(flipper(i) for i in range(50)))
    done.set()
    await check
    assert snapshots > 0
    client = aioredis.Redis.from_url(server_url(raw, redis_url, P))
    try:
        doc, sets, name = await _snapshot(client)
    finally:
        await client.aclose()
    assert _consistent(doc, sets, name)
    assert doc is not None
    if foreign:
        assert doc["skills"] == ["fr"]
    final = await caches[0].get_agent_status(A, "u1")
    assert final is not None and final.status.value == doc["status"]
