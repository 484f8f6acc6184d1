"""Sessions over a real redis-server: TTLs, the active set and its pruning, validation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
import redis

from cal_redis import CallableCache, NotFoundError, SessionData, ValidationError
from cal_redis.models import now_ms
from keyspace import K
from redis_stats import assert_rejected_before_io, data_keys

A = "acc1"


def skey(sid: str, account: str = A) -> str:
    return (K.account(account) + f"session:{sid}")


ACTIVE = (K.account(A) + "sessions:active")


async def test_create_and_get(cache: CallableCache, raw: redis.Redis) -> None:
    rt = cache.remote.round_trips
    s = await cache.create_session(A, "u1", ttl=60, data={"ua": "softphone/1.2"})
    assert cache.remote.round_trips - rt == 1
    assert s.account_id == A and s.user_id == "u1" and s.data == {"ua": "softphone/1.2"}
    assert len(s.id) >= 32 and s.expires_at - s.created_at == 60_000
    assert 59_000 < raw.pttl(skey(s.id)) <= 60_000
    assert raw.smembers(ACTIVE) == {s.id.encode()}
    stored = json.loads(raw.get(skey(s.id)))
    assert stored["id"] == s.id and stored["account_id"] == A and stored["data"]["ua"]
    rt = cache.remote.round_trips
    got = await cache.session_get(A, s.id)
    assert cache.remote.round_trips - rt == 1
    assert got is not None and got.id == s.id and got.data == s.data
    assert abs(got.expires_at - s.expires_at) < 1000
    # ids are fresh every time
    other = await cache.create_session(A, "u1", ttl=60)
    assert other.id != s.id and other.data == {}


async def test_missing_session(cache: CallableCache) -> None:
    assert await cache.session_get(A, "nope") is None
    assert await cache.session_touch(A, "nope", 10) is False
    assert await cache.session_delete(A, "nope") is False
    assert await cache.sessions_active(A) == []


async def test_session_set_keeps_ttl_and_foreign_fields(
    cache: CallableCache, raw: redis.Redis
) -> None:
    s = await cache.create_session(A, "u1", ttl=30)
    doc = json.loads(raw.get(skey(s.id)))
    doc["device_fingerprint"] = "abc"  # written by another service
    raw.set(skey(s.id), json.dumps(doc), keepttl=True)
    rt = cache.remote.round_trips
    out = await cache.session_set(A, msgspec.structs.replace(s, data={"step": 2}))
    assert cache.remote.round_trips - rt == 2  # stored value had an unknown field: merge
    assert out.data == {"step": 2}
    stored = json.loads(raw.get(skey(s.id)))
    assert stored["data"] == {"step": 2} and stored["device_fingerprint"] == "abc"
    assert 0 < raw.pttl(skey(s.id)) <= 30_000  # KEEPTTL
    # plain overwrite (no unknown field): one round trip
    raw.set(skey(s.id), raw.get(skey(s.id)).replace(b',"device_fingerprint":"abc"', b""),
            keepttl=True)
    rt = cache.remote.round_trips
    await cache.session_set(A, s)
    assert cache.remote.round_trips - rt == 1


async def test_session_set_with_ttl_resets_and_creates(
    cache: CallableCache, raw: redis.Redis
) -> None:
    s = await cache.create_session(A, "u1", ttl=5)
    out = await cache.session_set(A, s, ttl=500)
    assert raw.pttl(skey(s.id)) > 400_000
    assert abs(out.expires_at - (now_ms() + 500_000)) < 2000
    made = await cache.session_set(A, SessionData(id="custom-1", user_id="u9"), ttl=10)
    assert made.account_id == A
    assert raw.sismember(ACTIVE, "custom-1")
    assert 0 < raw.pttl(skey("custom-1")) <= 10_000


async def test_session_set_without_ttl_needs_a_live_session(
    cache: CallableCache, raw: redis.Redis
) -> None:
    with pytest.raises(NotFoundError):
        await cache.session_set(A, SessionData(id="ghost"))
    assert raw.exists(skey("ghost")) == 0 and raw.scard(ACTIVE) == 0


async def test_session_account_must_match(cache: CallableCache, raw: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        await cache.session_set(A, SessionData(id="s1", account_id="acc2"), ttl=5)
    assert info.value.argument == "account_id"
    with pytest.raises(ValidationError) as info:
        await cache.session_set(A, {"id": "s1"}, ttl=5)  # type: ignore[arg-type]
    assert info.value.argument == "session"
    assert data_keys(raw) == []


async def test_expiry_pruning_and_touch(cache: CallableCache, raw: redis.Redis) -> None:
    short = await cache.create_session(A, "u1", ttl=0.2)
    touched = await cache.create_session(A, "u2", ttl=0.2)
    long = await cache.create_session(A, "u3", ttl=30)
    assert await cache.session_touch(A, touched.id, 30) is True
    assert raw.pttl(skey(touched.id)) > 20_000
    got = await cache.session_get(A, touched.id)
    assert got is not None and got.expires_at > now_ms() + 20_000
    await asyncio.sleep(0.3)
    assert await cache.session_get(A, short.id) is None
    assert await cache.session_touch(A, short.id, 30) is False
    assert raw.scard(ACTIVE) == 3  # not pruned until listed
    assert await cache.sessions_active(A) == sorted([touched.id, long.id])
    assert raw.smembers(ACTIVE) == {touched.id.encode(), long.id.encode()}


async def test_listing_ignores_foreign_members(cache: CallableCache, raw: redis.Redis) -> None:
    s = await cache.create_session(A, "u1", ttl=30)
    raw.sadd(ACTIVE, "not:an:id")
    assert await cache.sessions_active(A) == [s.id]
    assert raw.sismember(ACTIVE, "not:an:id")  # left alone, not ours to judge


async def test_listing_many_sessions(cache: CallableCache, raw: redis.Redis) -> None:
    live = [await cache.create_session(A, "u1", ttl=30) for _ in range(5)]
    dead = [f"dead{i}" for i in range(2100)]
    raw.sadd(ACTIVE, *dead)
    rt = cache.remote.round_trips
    assert await cache.sessions_active(A) == sorted(s.id for s in live)
    assert cache.remote.round_trips - rt == 1 + 3  # SMEMBERS + one script per 1000
    assert raw.scard(ACTIVE) == 5


async def test_delete(cache: CallableCache, raw: redis.Redis) -> None:
    s = await cache.create_session(A, "u1", ttl=30)
    rt = cache.remote.round_trips
    assert await cache.session_delete(A, s.id) is True
    assert cache.remote.round_trips - rt == 1
    assert await cache.session_delete(A, s.id) is False
    assert raw.exists(skey(s.id)) == 0 and raw.scard(ACTIVE) == 0


async def test_sessions_are_per_account(cache: CallableCache) -> None:
    s = await cache.create_session(A, "u1", ttl=30)
    assert await cache.session_get("acc2", s.id) is None
    assert await cache.session_delete("acc2", s.id) is False
    assert await cache.session_touch("acc2", s.id, 5) is False
    assert await cache.sessions_active("acc2") == []
    assert await cache.session_get(A, s.id) is not None


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("create_session", ("a:b", "u1", 10), "account_id"),
        ("create_session", (A, "u 1", 10), "user_id"),
        ("create_session", (A, "u1", 0), "ttl"),
        ("create_session", (A, "u1", -1), "ttl"),
        ("create_session", (A, "u1", float("inf")), "ttl"),
        ("create_session", (A, "u1", float("nan")), "ttl"),
        ("create_session", (A, "u1", True), "ttl"),
        ("create_session", (A, "u1", "10"), "ttl"),
        ("create_session", (A, "u1", 10, ["x"]), "data"),
        ("create_session", (A, "u1", 10, {"x": object()}), "data"),
        ("session_get", (A, "s*"), "session_id"),
        ("session_get", ("", "s1"), "account_id"),
        ("session_set", (A, SessionData(id="s{1}")), "session_id"),
        ("session_set", ("a b", SessionData(id="s1")), "account_id"),
        ("session_set", (A, SessionData(id="s1"), 0), "ttl"),
        ("session_touch", (A, "s1", 0), "ttl"),
        ("session_touch", (A, "s?", 5), "session_id"),
        ("session_delete", (A, 42), "session_id"),
        ("sessions_active", ("acc]",), "account_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
