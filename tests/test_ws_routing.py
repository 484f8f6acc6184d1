"""Websocket routing over a real redis-server: connections, sets, cross-tenant protection.

Every test runs on each path of the routing (``path``): ``atomic``, the standalone key
style (one script per operation), and ``split``, the cluster key style (an
account-slot script and a record-slot step per operation, api/ws.py): on one server
with ``CacheConfig(cluster=True)``, or on the embedded cluster under
``--redis-cluster`` (where only ``split`` exists). Key names come from the cache's own
key builder. The interruption tests stop an operation before each of its writes in
turn and check that what is left is at worst a record without its index entry, which
``remove_node_connections`` (or removing the connection again) repairs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import redis

from cal_redis import (
    AgentState,
    AgentStatus,
    CacheConfig,
    CallableCache,
    ConnectionError,
    ValidationError,
    WsConnection,
)
from keyspace import K
from redis_stats import assert_rejected_before_io

A, B = "acc1", "acc2"
WS = K.WS_CONNECTIONS  # the same name in both key styles


#: The writes of one websocket operation on each path (an interruption test stops
#: before each in turn).
WRITES = {"atomic": 1, "split": 2}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "path" not in metafunc.fixturenames:
        return
    paths = ["split"] if metafunc.config.option.redis_cluster else ["atomic", "split"]
    if "step" in metafunc.fixturenames:
        pairs = [(p, n) for p in paths for n in range(1, WRITES[p] + 1)]
        metafunc.parametrize(("path", "step"), pairs, ids=[f"{p}-{n}" for p, n in pairs])
    else:
        metafunc.parametrize("path", paths)


@pytest.fixture
def make_ws(path: str, make_cache: Any, request: pytest.FixtureRequest) -> Any:
    """Factory of connected caches on the test database that route by ``path``."""
    on_cluster = request.config.option.redis_cluster

    async def factory() -> CallableCache:
        if path == "split" and not on_cluster:
            return await make_cache(CacheConfig(cluster=True))  # two slots' steps, one server
        cache: CallableCache = await make_cache()
        return cache

    return factory


@pytest.fixture
async def cache(make_ws: Any) -> CallableCache:
    """A connected cache that routes by ``path`` (replaces conftest's ``cache`` here)."""
    made: CallableCache = await make_ws()
    return made


def rts(cache: CallableCache, atomic: int, split: int) -> int:
    """Round trips of an operation on the cache's path."""
    return split if cache.keys.cluster else atomic


def connected(raw: redis.Redis, cache: CallableCache, account: str = A) -> set[bytes]:
    return raw.smembers(cache.keys.agents_connected(account))  # type: ignore[return-value]


def index(raw: redis.Redis, cache: CallableCache, account: str = A) -> dict[bytes, bytes]:
    return raw.hgetall(cache.keys.ws_connections(account))  # type: ignore[return-value]


def records(raw: redis.Redis, account: str) -> dict[str, dict[str, Any]]:
    """The records of ``cal:ws:connections`` that name ``account``."""
    out = {}
    for field, value in raw.hgetall(WS).items():  # type: ignore[union-attr]
        rec = json.loads(value)
        if rec.get("account_id") == account:
            out[field.decode()] = rec
    return out


def assert_every_index_entry_has_its_record(
    raw: redis.Redis, cache: CallableCache, accounts: Iterable[str] = (A, B)
) -> None:
    """What the order of the split path's steps guarantees after any interruption: the
    account's view holds no connection the record hash lacks, and every user in
    ``agents:connected`` has an indexed connection (so a scan of the records by node
    finds everything left to repair)."""
    for account in accounts:
        recs = records(raw, account)
        entries = index(raw, cache, account)
        for conn, user in entries.items():
            rec = recs.get(conn.decode())
            assert rec is not None, f"{account}: index entry {conn!r} has no record"
            assert rec["user_id"] == user.decode()
        assert connected(raw, cache, account) <= set(entries.values())


def before_write(
    monkeypatch: pytest.MonkeyPatch, cache: CallableCache, step: int,
    action: Callable[[], Awaitable[None]],
) -> None:
    """Run ``action`` just before the ``step``-th write (script or pipeline, not a
    read) that ``cache`` sends from now on; if it raises, that write is never sent."""
    remote = cache.remote
    cls = type(remote)
    seen = [0]

    def guard(orig: Any) -> Any:
        async def call(self: Any, what: str, *args: Any, read: bool = False) -> Any:
            if self is remote and not read:
                seen[0] += 1
                if seen[0] == step:
                    await action()
            return await orig(self, what, *args, read=read)

        return call

    monkeypatch.setattr(cls, "script", guard(cls.script))
    monkeypatch.setattr(cls, "pipeline", guard(cls.pipeline))


def interrupt(monkeypatch: pytest.MonkeyPatch, cache: CallableCache, step: int) -> None:
    """The ``step``-th write of ``cache`` fails before it is sent, as when the process
    stops or loses its connection there."""

    async def stop() -> None:
        raise ConnectionError(f"interrupted before write {step}")

    before_write(monkeypatch, cache, step, stop)


async def test_add_get_list(cache: CallableCache, raw: redis.Redis) -> None:
    rt = cache.remote.round_trips
    c = await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    assert cache.remote.round_trips - rt == rts(cache, 1, 2)
    assert c == WsConnection(id="conn-1", account_id=A, user_id="u1", node_id="node-1",
                             connected_at=c.connected_at)
    assert c.connected_at > 0
    assert json.loads(raw.hget(WS, "conn-1")) == {
        "id": "conn-1", "account_id": A, "user_id": "u1", "node_id": "node-1",
        "connected_at": c.connected_at}
    assert connected(raw, cache) == {b"u1"}
    assert index(raw, cache) == {b"conn-1": b"u1"}
    await cache.add_connected_agent(A, "u2", "conn-0", "node-2")
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")
    assert await cache.get_connection("conn-1") == c
    assert await cache.get_connection("nope") is None
    rt = cache.remote.round_trips
    conns = await cache.get_account_connections(A)
    assert cache.remote.round_trips - rt == rts(cache, 1, 2)
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
    assert connected(raw, cache) == set() and connected(raw, cache, B) == {b"u9"}


async def test_remove_is_tenant_safe(cache: CallableCache, raw: redis.Redis) -> None:
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")
    assert await cache.remove_connected_agent(A, "conn-b") is False
    assert raw.hexists(WS, "conn-b") and connected(raw, cache, B) == {b"u1"}
    assert await cache.remove_connected_agent(A, "missing") is False
    assert await cache.remove_connected_agent(B, "conn-b") is True
    assert not raw.hexists(WS, "conn-b") and connected(raw, cache, B) == set()
    assert await cache.remove_connected_agent(B, "conn-b") is False


async def test_user_stays_connected_while_a_connection_is_left(
    cache: CallableCache, raw: redis.Redis
) -> None:
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    await cache.add_connected_agent(A, "u1", "conn-2", "node-2")
    await cache.add_connected_agent(A, "u2", "conn-3", "node-1")
    rt = cache.remote.round_trips
    assert await cache.remove_connected_agent(A, "conn-1") is True
    assert cache.remote.round_trips - rt == rts(cache, 2, 3)
    assert connected(raw, cache) == {b"u1", b"u2"}
    assert await cache.remove_connected_agent(A, "conn-2") is True
    assert connected(raw, cache) == {b"u2"}
    assert [c.id for c in await cache.get_account_connections(A)] == ["conn-3"]


async def test_connection_record_written_by_another_service(
    cache: CallableCache, raw: redis.Redis
) -> None:
    # A foreign writer that knows only the seed's keys: no per-account index entry.
    raw.hset(WS, "conn-f", json.dumps({"id": "conn-f", "account_id": A, "user_id": "u5",
                                       "node_id": "n", "extra": 1}))
    raw.sadd(cache.keys.agents_connected(A), "u5")
    assert (await cache.get_connection("conn-f")).user_id == "u5"  # type: ignore[union-attr]
    assert await cache.remove_connected_agent(B, "conn-f") is False
    assert await cache.remove_connected_agent(A, "conn-f") is True
    assert not raw.hexists(WS, "conn-f") and connected(raw, cache) == set()


async def test_status_connected_follows_connections(cache: CallableCache, raw: redis.Redis) -> None:
    skey = cache.keys.agent_status(A, "u1")
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
    assert raw.get(cache.keys.agent_status(A, "u7")) is None


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
    assert connected(raw, cache) == set() and connected(raw, cache, B) == set()


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


# -- interruptions and their repair ------------------------------------------------------
async def status_connected(cache: CallableCache, user: str) -> bool | None:
    status = await cache.get_agent_status(A, user)
    return None if status is None else status.connected


async def test_an_interrupted_add_is_repaired_by_node_cleanup(
    cache: CallableCache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    await cache.set_agent_status(A, AgentStatus(user_id="u1", status=AgentState.AVAILABLE))
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")  # another tenant's, kept
    b_record = raw.hget(WS, "conn-b")
    interrupt(monkeypatch, cache, step)
    with pytest.raises(ConnectionError):
        await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    monkeypatch.undo()
    assert_every_index_entry_has_its_record(raw, cache)
    left = await cache.get_connection("conn-1")
    if cache.keys.cluster and step == 2:  # the one orphan: the record, no index entry
        assert left is not None and left.user_id == "u1"
        assert await cache.get_account_connections(A) == []
        assert connected(raw, cache) == set()
    else:
        assert left is None  # nothing was written
    assert await cache.remove_node_connections("node-1") == 1 + (left is not None)
    assert raw.hkeys(WS) == [] and index(raw, cache) == {} and connected(raw, cache) == set()
    assert await status_connected(cache, "u1") is not True
    assert b_record is not None and index(raw, cache, B) == {}  # B's went with its node


async def test_an_interrupted_add_is_repaired_by_adding_again(
    cache: CallableCache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    await cache.set_agent_status(A, AgentStatus(user_id="u1", status=AgentState.AVAILABLE))
    interrupt(monkeypatch, cache, step)
    with pytest.raises(ConnectionError):
        await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    monkeypatch.undo()
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")  # the same user: allowed
    assert [c.id for c in await cache.get_account_connections(A)] == ["conn-1"]
    assert connected(raw, cache) == {b"u1"} and await status_connected(cache, "u1") is True
    assert_every_index_entry_has_its_record(raw, cache)


@pytest.mark.parametrize("repair", ["node cleanup", "removing again"])
async def test_an_interrupted_removal_is_repaired(
    cache: CallableCache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: int,
    repair: str,
) -> None:
    await cache.set_agent_status(A, AgentStatus(user_id="u1", status=AgentState.AVAILABLE))
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")
    await cache.add_connected_agent(A, "u2", "conn-2", "node-2")  # stays
    await cache.add_connected_agent(B, "u1", "conn-b", "node-1")
    b_before = (raw.hget(WS, "conn-b"), index(raw, cache, B), connected(raw, cache, B))
    interrupt(monkeypatch, cache, step)
    with pytest.raises(ConnectionError):
        await cache.remove_connected_agent(A, "conn-1")
    monkeypatch.undo()
    assert_every_index_entry_has_its_record(raw, cache)
    if cache.keys.cluster and step == 2:  # the one orphan: the record, no index entry
        assert (await cache.get_connection("conn-1")) is not None
        assert index(raw, cache) == {b"conn-2": b"u2"} and connected(raw, cache) == {b"u2"}
    if repair == "node cleanup":
        assert await cache.remove_node_connections("node-1") == 2  # conn-1 and conn-b
        assert not raw.hexists(WS, "conn-b")
    else:
        assert await cache.remove_connected_agent(A, "conn-1") is True
        assert (raw.hget(WS, "conn-b"), index(raw, cache, B), connected(raw, cache, B)) == b_before
    assert await cache.get_connection("conn-1") is None
    assert [c.id for c in await cache.get_account_connections(A)] == ["conn-2"]
    assert connected(raw, cache) == {b"u2"} and await status_connected(cache, "u1") is False
    assert_every_index_entry_has_its_record(raw, cache)


async def test_an_interrupted_node_cleanup_is_finished_by_running_it_again(
    cache: CallableCache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    for i in range(12):
        await cache.add_connected_agent((A, B)[i % 2], f"u{i % 3}", f"c{i}", "dead")
    await cache.add_connected_agent(A, "u0", "c-alive", "alive")
    interrupt(monkeypatch, cache, step)
    with pytest.raises(ConnectionError):
        await cache.remove_node_connections("dead")
    monkeypatch.undo()
    assert_every_index_entry_has_its_record(raw, cache)
    assert await cache.remove_node_connections("dead") == 12  # every record was left
    assert [f.decode() for f in raw.hkeys(WS)] == ["c-alive"]
    assert index(raw, cache) == {b"c-alive": b"u0"} and index(raw, cache, B) == {}
    assert connected(raw, cache) == {b"u0"} and connected(raw, cache, B) == set()


async def test_a_connection_that_moves_while_its_node_is_cleaned_up_is_kept(
    make_ws: Any, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, other = await make_ws(), await make_ws()
    await cache.set_agent_status(A, AgentStatus(user_id="u1", status=AgentState.AVAILABLE))
    await cache.add_connected_agent(A, "u1", "conn-1", "dead")
    await cache.add_connected_agent(A, "u2", "conn-2", "dead")

    async def resume() -> None:  # conn-1 resumes on node-2 after the scan saw it on "dead"
        await other.add_connected_agent(A, "u1", "conn-1", "node-2")

    before_write(monkeypatch, cache, 1, resume)
    assert await cache.remove_node_connections("dead") == 1
    moved = await cache.get_connection("conn-1")
    assert moved is not None and moved.node_id == "node-2"
    assert [c.id for c in await cache.get_account_connections(A)] == ["conn-1"]
    assert connected(raw, cache) == {b"u1"} and await status_connected(cache, "u1") is True
    assert_every_index_entry_has_its_record(raw, cache)


async def test_a_removal_that_meets_a_new_owner_finds_it_again(
    make_ws: Any, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, other = await make_ws(), await make_ws()
    await cache.add_connected_agent(A, "u1", "conn-1", "node-1")

    async def handover() -> None:  # after the removal found u1: conn-1 goes to u2
        await other.remove_connected_agent(A, "conn-1")
        await other.add_connected_agent(A, "u2", "conn-1", "node-1")

    before_write(monkeypatch, cache, 1, handover)
    assert await cache.remove_connected_agent(A, "conn-1") is True
    assert not raw.hexists(WS, "conn-1") and index(raw, cache) == {}
    assert connected(raw, cache) == set()


async def test_an_index_entry_naming_another_accounts_connection(
    cache: CallableCache, raw: redis.Redis
) -> None:
    await cache.add_connected_agent(B, "u9", "conn-b", "node-1")
    b_before = (raw.hget(WS, "conn-b"), index(raw, cache, B), connected(raw, cache, B))
    raw.hset(cache.keys.ws_connections(A), "conn-b", "u1")  # a stale or forged entry of A
    raw.sadd(cache.keys.agents_connected(A), "u1")
    assert await cache.get_account_connections(A) == []  # B's record is never returned
    with pytest.raises(ValidationError) as info:
        await cache.add_connected_agent(A, "u1", "conn-b", "node-1")
    assert info.value.argument == "connection_id"
    assert await cache.remove_connected_agent(A, "conn-b") is True  # A's own entry only
    assert index(raw, cache) == {} and connected(raw, cache) == set()
    assert (raw.hget(WS, "conn-b"), index(raw, cache, B), connected(raw, cache, B)) == b_before
    assert await cache.remove_node_connections("node-2") == 0
