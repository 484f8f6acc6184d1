"""Conversations over a real redis-server: TTLs, foreign fields, validation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis

from cal_redis import CallableCache, Conversation
from keyspace import K as KEYS
from redis_stats import assert_rejected_before_io

A = "acc1"
K = (KEYS.account(A) + "conversation:c1")


async def test_set_get_delete(cache: CallableCache, raw: redis.Redis) -> None:
    assert await cache.get_conversation(A, "c1") is None
    rt = cache.remote.round_trips
    conv = await cache.set_conversation(A, Conversation(id="c1", channel="voice",
                                                        participants=["u1", "+4412"]))
    assert cache.remote.round_trips - rt == 1
    assert conv.account_id == A
    assert raw.pttl(K) == -1  # no TTL asked: none set
    assert await cache.get_conversation(A, "c1") == conv
    assert await cache.get_conversation("acc2", "c1") is None
    assert json.loads(raw.get(K))["participants"] == ["u1", "+4412"]
    assert await cache.delete_conversation(A, "c1") is True
    assert await cache.delete_conversation(A, "c1") is False


async def test_ttl_set_kept_and_expiring(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.set_conversation(A, Conversation(id="c1", status="ringing"), ttl=0.2)
    assert 0 < raw.pttl(K) <= 200
    await cache.set_conversation(A, Conversation(id="c1", status="answered"))  # KEEPTTL
    assert 0 < raw.pttl(K) <= 200
    await asyncio.sleep(0.3)
    assert await cache.get_conversation(A, "c1") is None
    await cache.set_conversation(A, Conversation(id="c1"), ttl=60)
    assert raw.pttl(K) > 50_000


async def test_foreign_fields_kept(cache: CallableCache, raw: redis.Redis) -> None:
    raw.set(K, json.dumps({"id": "c1", "recording_url": "s3://r/1"}))
    await cache.set_conversation(A, Conversation(id="c1", status="ended"))
    doc = json.loads(raw.get(K))
    assert doc["recording_url"] == "s3://r/1" and doc["status"] == "ended"


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("get_conversation", (A, "c:1"), "conversation_id"),
        ("get_conversation", ("a*", "c1"), "account_id"),
        ("set_conversation", (A, Conversation(id="c 1")), "conversation_id"),
        ("set_conversation", (A, Conversation(id="c1", account_id="acc2")), "account_id"),
        ("set_conversation", (A, Conversation(id="c1"), -3), "ttl"),
        ("set_conversation", (A, {"id": "c1"}), "conv"),
        ("delete_conversation", (A, "c?"), "conversation_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
