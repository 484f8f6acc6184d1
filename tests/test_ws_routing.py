"""Websocket routing over a real redis-server: connections, sets, cross-tenant protection."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from cal_redis import AgentState, AgentStatus, CallableCache, ValidationError, WsConnection
from keyspace import K
from redis_stats import assert_rejected_before_io

A, B = "acc1", "acc2"
WS = "cal:ws:connections"


def connected(raw: redis.Redis, account: str = A) -> set[bytes]:
    return raw.smembers(K.account(account) + "agents:connected")  # type: ignore[return-value]


async def test_add_get_list(cache: CallableCache, raw: redis.Redis) -> None:
    rt = cache.remote.round_trips
    c = await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    assert cache.remote.round_trips - rt == 1
    assert c == WsConnection(id="conn-1", account_id=A, user_id="u1", node_id="node-1",
                             connected_at=c.connected_at)
    assert c.connected_at > 0
    assert json.loads(raw.hget(WS, "conn-1")) == {
        "id": "conn-1", "account_id": A, "user_id": "u1", "node_id": "node-1",
        "connected_at": c.connected_at}
    assert connected(raw) == {b"u1"}
    assert raw.hgetall(K.account(A) + "ws:connections") == {b"conn-1": b"u1"}
    await cache.add_connected_agent(A, "u2", "conn-0", "node-2")
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")
    assert await cache.get_connection("conn-1") == c
    assert await cache.get_connection("nope") is None
    rt = cache.remote.round_trips
    conns = await cache.get_account_connections(A)
    assert cache.remote.round_trips - rt == 1
    assert [x.id for x in conns] == ["conn-0", "conn-1"]
    assert [x.id for x in await cache.get_account_connections(B)] == ["conn-b"]
    assert await cache.get_account_connections("acc3") == []
    assert await cache.agents_get_connected(A) == {"u1", "u2"}


async def test_readd_same_user_refreshes(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    again = await cache.add_connected_agent(A, "u1", "conn-1", "node-2")
    assert (await cache.get_connection("conn-1")) == again and again.node_id == "node-2"


async def test_connection_id_cannot_be_taken_over(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.add_connected_agent(B, "u9", "conn-x", "node-1")
    before = raw.hget(WS, "conn-x")
    for account, user in ((A, "u1"), (B, "u1")):
        with pytest.raises(ValidationError) as info:
            await cache.add_connected_agent(account, user, "conn-x", "node-1")
        assert info.value.argument == "connection_id"
    assert raw.hget(WS, "conn-x") == before
    assert connected(raw) == set() and connected(raw, B) == {b"u9"}


async def test_remove_is_tenant_safe(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")
    assert await cache.remove_connected_agent(A, "conn-b") is False
    assert raw.hexists(WS, "conn-b") and connected(raw, B) == {b"u1"}
    assert await cache.remove_connected_agent(A, "missing") is False
    assert await cache.remove_connected_agent(B, "conn-b") is True
    assert not raw.hexists(WS, "conn-b") and connected(raw, B) == set()
    assert await cache.remove_connected_agent(B, "conn-b") is False


async def test_user_stays_connected_while_a_connection_is_left(
    cache: CallableCache, raw: redis.Redis
) -> None:
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    await cache.add_connected_agent(A, "u1", "conn-2", "node-2")
    await cache.add_connected_agent(A, "u2", "conn-3", "node-1")
    assert await cache.remove_connected_agent(A, "conn-1") is True
    assert connected(raw) == {b"u1", b"u2"}
    assert await cache.remove_connected_agent(A, "conn-2") is True
    assert connected(raw) == {b"u2"}
    assert [c.id for c in await cache.get_account_connections(A)] == ["conn-3"]


async def test_connection_record_written_by_another_service(
    cache: CallableCache, raw: redis.Redis
) -> None:
    # A foreign writer that knows only the seed's keys: no per-account index entry.
    raw.hset(WS, "conn-f", json.dumps({"id": "conn-f", "account_id": A, "user_id": "u5",
                                       "node_id": "n", "extra": 1}))
    raw.sadd((K.account(A) + "agents:connected"), "u5")
    assert (await cache.get_connection("conn-f")).user_id == "u5"  # type: ignore[union-attr]
    assert await cache.remove_connected_agent(B, "conn-f") is False
    assert await cache.remove_connected_agent(A, "conn-f") is True
    assert not raw.hexists(WS, "conn-f") and connected(raw) == set()


async def test_status_connected_follows_connections(cache: CallableCache, raw: redis.Redis) -> None:
    skey = (K.account(A) + "agent:status:u1")
    await cache.set_agent_status(A, AgentStatus(user_id="u1", status=AgentState.AVAILABLE))
    doc = {"skills": {"connected": False}}  # a nested look-alike, first: not edited
    doc.update(json.loads(raw.get(skey)))
    raw.set(skey, json.dumps(doc, separators=(",", ":")))
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    after = json.loads(raw.get(skey))
    assert after["connected"] is True and after["skills"] == {"connected": False}
    assert (await cache.get_agent_status(A, "u1")).connected is True  # type: ignore[union-attr]
    await cache.remove_connected_agent(A, "conn-1")
    assert json.loads(raw.get(skey))["connected"] is False
    # a status written without the field gets it
    raw.set(skey, json.dumps({"user_id": "u1", "status": "busy"}))
    await cache.add_connected_agent(A, "u1", "conn-2", "node-1")
    assert json.loads(raw.get(skey)) == {"connected": True, "user_id": "u1", "status": "busy"}
    # no status stored: none is invented
    await cache.add_connected_agent(A, "u7", "conn-7", "node-1")
    assert raw.get(K.account(A) + "agent:status:u7") is None


async def test_remove_node_connections(cache: CallableCache, raw: redis.Redis) -> None:
    for i in range(1200):
        account = (A, B)[i % 2]
        node = "alive" if i % 3 == 0 else "dead"
        await cache.add_connected_agent(account, f"u{i % 7}", f"c{i}", node)
    raw.hset(WS, "junk", b"not json, but mentions dead")
    alive = {f"c{i}" for i in range(1200) if i % 3 == 0}
    removed = await cache.remove_node_connections("dead")
    assert removed == 1200 - len(alive)
    assert {f.decode() for f in raw.hkeys(WS)} == alive | {"junk"}
    for account in (A, B):
        conns = await cache.get_account_connections(account)
        assert {c.id for c in conns} <= alive and all(c.node_id == "alive" for c in conns)
        users = {c.user_id for c in conns}
        assert await cache.agents_get_connected(account) == users
    assert await cache.remove_node_connections("dead") == 0
    assert await cache.remove_node_connections("alive") == len(alive)
    assert connected(raw) == set() and connected(raw, B) == set()


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("add_connected_agent", ("a:b", "u1", "c1", "n1"), "account_id"),
        ("add_connected_agent", (A, "u 1", "c1", "n1"), "user_id"),
        ("add_connected_agent", (A, "u1", "c*", "n1"), "connection_id"),
        ("add_connected_agent", (A, "u1", "c1", ""), "node_id"),
        ("remove_connected_agent", (A, "c?"), "connection_id"),
        ("remove_connected_agent", ("", "c1"), "account_id"),
        ("get_account_connections", ("a[1]",), "account_id"),
        ("get_connection", ("c\n1",), "connection_id"),
        ("remove_node_connections", ("n:1",), "node_id"),
    ],
)
async def test_bad_arguments_raise_before_any_command(
    cache: CallableCache, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    await assert_rejected_before_io(cache, raw, method, args, argument)
