"""Sync over a real redis-server: events keep several instances' L1 in step.

Every test runs with both L1 implementations (``make_cache``) and, where it
matters, under RESP2 and RESP3 (pub/sub messages arrive as push frames in RESP3).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from cal_redis import (
    CacheConfig,
    CallableCache,
    CalRedisError,
    Device,
    Event,
    FlowState,
    NotFoundError,
    User,
    ValidationError,
)
from cal_redis.embedded import EmbeddedRedis, _free_port
from cal_redis.engine.negative import held as l1_value  # ABSENT (known absent) -> None
from cal_redis.sync import MAX_EVENT_BYTES
from keyspace import K
from redis_stats import client_of, kill_clients, numsub, url_of
from waiting import until

# Sync applies events to the L1: each implementation.
pytestmark = pytest.mark.l1

Factory = Callable[..., Awaitable[CallableCache]]


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def proto(request: pytest.FixtureRequest) -> int:
    return int(request.param)


class Barrier:
    """Quiescence: an event published after everything else; when each reader has
    seen it, every earlier event has been applied (one connection, publish order)."""

    def __init__(self, *readers: CallableCache) -> None:
        self.waiting: dict[str, list[asyncio.Future[None]]] = {}
        for r in readers:
            r.add_event_handler(self._seen)
        self.readers = len(readers)
        self.n = 0

    def _seen(self, event: Event) -> None:
        if event.type == "Barrier":
            for fut in self.waiting.get(event.id, ()):
                if not fut.done():
                    fut.set_result(None)
                    break

    async def __call__(self, writer: CallableCache, timeout: float = 3.0) -> None:
        self.n += 1
        token = f"{id(self):x}.b{self.n}"  # unique: other barriers see this event too
        loop = asyncio.get_running_loop()
        futs = self.waiting[token] = [loop.create_future() for _ in range(self.readers)]
        try:
            if writer.remote.is_cluster:
                # Cluster pub/sub orders events per node: the barrier must leave
                # from the node that publishes the users' events (cal:users' master).
                await client_of(writer, writer.keys.USERS).publish(
                    writer.keys.EVENTS, msgspec.json.encode({"type": "Barrier", "id": token}))
            else:
                await writer.publish_event(Event(type="Barrier", id=token))
            await asyncio.wait_for(asyncio.gather(*futs), timeout)
        finally:
            del self.waiting[token]


def user_json(uid: str, **fields: Any) -> bytes:
    return msgspec.json.encode({"id": uid, **fields})


def stored_user(raw: redis.Redis, uid: str) -> User | None:
    data = raw.hget("cal:users", uid)
    return None if data is None else msgspec.json.decode(data, type=User)


@pytest.fixture
async def pair(make_cache: Factory, proto: int) -> tuple[CallableCache, CallableCache]:
    cfg = CacheConfig(protocol=proto)
    return await make_cache(cfg), await make_cache(cfg)


# -- basic propagation --------------------------------------------------------------------
async def test_connect_subscribes_and_close_stops(make_cache: Factory, proto: int) -> None:
    cache = await make_cache(CacheConfig(protocol=proto))
    st = cache.sync_state
    assert st.state == "connected" and cache._ctx.gate.fill_ok and cache._ctx.gate.track
    assert cache.stats()["sync"]["state"] == "connected"
    task = cache._sync._task
    assert task is not None and not task.done()
    await cache.close()
    await cache.close()  # idempotent
    assert task.done()
    assert cache.sync_state.state == "stopped"


async def test_sync_disabled(make_cache: Factory, raw: redis.Redis) -> None:
    cache = await make_cache(CacheConfig(sync=False))
    assert cache.sync_state.state == "disabled"
    assert not cache._sync.running and cache._ctx.gate.fill_ok and not cache._ctx.gate.track
    # App subscriptions still work: the connection is opened on demand.
    stream = cache.events()
    await until(lambda: numsub(raw, "cal:events") == 1, what="lazy subscription")
    raw.publish("cal:events", msgspec.json.encode({"type": "Hello", "id": "h1"}))
    ev = await asyncio.wait_for(anext(stream), 3)
    assert ev.type == "Hello"
    assert cache.sync_state.state == "disabled"


async def test_writes_propagate_to_other_instance(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    users, devices = b.local["users"], b.local["devices"]
    # B caches the "before" values.
    await a.set_user(User(id="u1", account_id="acc1", email="one@x.io", name="One"))
    await a.set_device("acc1", Device(id="d1", sip_username="sip1", name="Phone"))
    assert (await b.get_user_by_id("u1")) is not None
    assert (await b.get_device("acc1", "d1")) is not None

    await a.update_user("u1", name="Uno")
    await until(lambda: getattr(users.peek("u1"), "name", None) == "Uno", what="update")
    await a.set_user(User(id="u1", account_id="acc1", email="one@x.io", name="Eins"))
    await until(lambda: getattr(users.peek("u1"), "name", None) == "Eins", what="set")
    await a.update_device("acc1", "d1", name="Desk phone")
    await until(
        lambda: getattr(devices.peek(("acc1", "d1")), "name", None) == "Desk phone", what="device"
    )
    await a.delete_user("u1")
    await until(lambda: users.peek("u1") is None, what="delete")
    assert await b.get_user_by_id("u1") is None
    await a.delete_device("acc1", "d1")
    await until(lambda: devices.peek(("acc1", "d1")) is None, what="device delete")
    # Refreshed, not merely invalidated: B served the new value from L1.
    st = b.sync_state
    assert st.applied >= 5 and st.malformed == 0 and st.unknown == 0
    # A's own echoes reach its subscriber on its own node: on a cluster, not
    # necessarily before B's events reached B's.
    await until(lambda: a.sync_state.echoes >= 6, what="a's echoes")


async def test_foreign_writer(pair: tuple[CallableCache, CallableCache], raw: redis.Redis) -> None:
    """Another service writes JSON per the wire format and publishes raw events."""
    a, b = pair
    raw.hset("cal:users", "u7", user_json("u7", name="Seven", future_field=[1, 2]))
    assert (await a.get_user_by_id("u7")).name == "Seven"  # type: ignore[union-attr]
    assert (await b.get_user_by_id("u7")).name == "Seven"  # type: ignore[union-attr]

    # Update with data: both refresh from the event itself.
    new = user_json("u7", name="Siete", future_field=[3])
    raw.hset("cal:users", "u7", new)
    raw.publish("cal:events", b'{"type":"UserUpdate","id":"u7","origin":"svc-go","ts":1,"data":'
                + new + b"}")
    for c in (a, b):
        await until(lambda c=c: getattr(c.local["users"].peek("u7"), "name", "") == "Siete")

    # Update without data: invalidate, next read goes to Redis.
    raw.hset("cal:users", "u7", user_json("u7", name="Sette"))
    raw.publish("cal:events", b'{"type":"UserUpdate","id":"u7"}')
    for c in (a, b):
        await until(lambda c=c: c.local["users"].peek("u7") is None)
        assert (await c.get_user_by_id("u7")).name == "Sette"  # type: ignore[union-attr]

    # Device of an account, on the account channel, account_id omitted in the event.
    raw.hset((K.account("acc9") + "devices"), "d9", msgspec.json.encode({"id": "d9", "name": "X"}))
    assert (await b.get_device("acc9", "d9")).name == "X"  # type: ignore[union-attr]
    raw.hset((K.account("acc9") + "devices"), "d9", msgspec.json.encode({"id": "d9", "name": "Y"}))
    raw.publish((K.account("acc9") + "events"), b'{"type":"DeviceUpdate","id":"d9"}')
    await until(lambda: b.local["devices"].peek(("acc9", "d9")) is None)
    assert (await b.get_device("acc9", "d9")).name == "Y"  # type: ignore[union-attr]

    # UserSync drops the users namespace only.
    raw.hset("cal:users", "u8", user_json("u8"))
    await b.get_user_by_id("u7")
    await b.get_user_by_id("u8")
    assert len(b.local["users"]) >= 2
    raw.publish("cal:events", b'{"type":"UserSync"}')
    await until(lambda: len(b.local["users"]) == 0, what="UserSync")
    assert b.local["devices"].peek(("acc9", "d9")) is not None
    assert b.sync_state.malformed == 0


async def test_own_echo_is_skipped(pair: tuple[CallableCache, CallableCache]) -> None:
    a, b = pair
    barrier = Barrier(a, b)
    written = await a.set_user(User(id="u1", name="Mine"))
    await barrier(a)
    st = a.sync_state
    assert st.echoes == 1 and st.applied == 0
    # The echo left the very object the write put in L1.
    assert a.local["users"].peek("u1") is written
    assert a._users.pending == {}
    assert b.local["users"].peek("u1") == written


async def test_publish_api(pair: tuple[CallableCache, CallableCache], raw: redis.Redis) -> None:
    a, b = pair
    n = await a.publish_event(Event(type="Custom", id="x"))
    # Both instances' subscribers; a cluster node counts only its own subscribers.
    assert n == 2 or (a.remote.is_cluster and 0 <= n <= 2)
    with pytest.raises(ValidationError, match="account_id"):
        await a.publish_account_event("bad:id", Event(type="X"))
    with pytest.raises(ValidationError, match="event"):
        await a.publish_account_event("acc1", Event(type="X", account_id="acc2"))
    with pytest.raises(ValidationError, match="account channel"):
        await a.publish_event(Event(type="DeviceUpdate", id="d1"))
    with pytest.raises(ValidationError, match="cal:events"):
        await a.publish_account_event("acc1", Event(type="UserUpdate", id="u1"))
    with pytest.raises(ValidationError, match=r"event\.id"):
        await a.publish_event(Event(type="UserDelete", id="a b"))
    with pytest.raises(ValidationError):
        await a.publish_event("not an event")  # type: ignore[arg-type]

    stream = b.events(account_id="acc1")
    n = await a.publish_account_event("acc1", Event(type="CallStarted", id="c1"))
    assert n == 2 or (a.remote.is_cluster and 0 <= n <= 2)
    ev = await asyncio.wait_for(anext(stream), 3)
    assert (ev.type, ev.id, ev.account_id) == ("CallStarted", "c1", "acc1")
    assert ev.origin == a.instance_id
    assert ev.ts > 0

    # An entity event published by hand invalidates the publisher's own L1 too.
    await a.set_user(User(id="u1", name="One"))
    await b.get_user_by_id("u1")
    assert a.local["users"].peek("u1") is not None
    await a.publish_event(Event(type="UserUpdate", id="u1"))
    assert a.local["users"].peek("u1") is None
    await until(lambda: b.local["users"].peek("u1") is None)


async def test_flow_state_events(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    barrier = Barrier(b)
    await a.set_flow_state("acc1", FlowState(id="f1", state="s1"))
    await barrier(a)
    assert (await b.get_flow_state("acc1", "f1")).state == "s1"  # type: ignore[union-attr]
    assert b.local["flow_states"].peek(("acc1", "f1")) is not None
    await a.set_flow_state("acc1", FlowState(id="f1", state="s2"))
    await until(lambda: b.local["flow_states"].peek(("acc1", "f1")) is None)
    assert (await b.get_flow_state("acc1", "f1")).state == "s2"  # type: ignore[union-attr]
    raw.publish("cal:events", b'{"type":"FlowStateDelete","id":"f1"}')  # needs an account
    await barrier(a)
    assert b.sync_state.malformed == 1


# -- malformed input ----------------------------------------------------------------------
async def test_malformed_events_are_counted_and_ignored(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    await a.set_user(User(id="u1", name="One"))
    await a.set_device("acc1", Device(id="d1", name="Phone"))
    await b.get_user_by_id("u1")
    await b.get_device("acc1", "d1")
    # Both writes' events are in (on a cluster they come from two nodes, each at its pace).
    await until(lambda: b.sync_state.received >= 2, what="the writes' events")
    before = b.sync_state
    # One connection publishes everything, so everything arrives in publish order (on a
    # cluster, each node forwards its own publishes at its own pace).
    pub = raw.get_redis_connection(raw.get_default_node()) if a.remote.is_cluster else raw
    huge = b'{"type":"UserUpdate","id":"u1","data":{"id":"u1","name":"' + b"x" * (3 << 20) + b'"}}'
    assert len(huge) > MAX_EVENT_BYTES
    bad: list[tuple[str, bytes]] = [
        ("cal:events", b"{not json"),
        ("cal:events", b"[1, 2]"),
        ("cal:events", b'{"type": 5}'),
        ("cal:events", b'{"id": "u1"}'),  # no type
        ("cal:events", b'{"type":"UserUpdate","id":7}'),
        ("cal:events", b'{"type":"UserUpdate","id":"u1","data":{"id":"u2","name":"Two"}}'),
        ("cal:events", b'{"type":"UserUpdate","id":"u1","data":{"id":"u1","name":5}}'),
        ("cal:events", b'{"type":"UserDelete","id":"a:b"}'),  # invalid id
        ("cal:events", b'{"type":"UserDelete","id":""}'),
        ("cal:events", huge),
        ("cal:events", b'{"type":"DeviceDelete","id":"d1","account_id":"acc1"}'),  # wrong channel
        ((K.account("acc1") + "events"), b'{"type":"DeviceDelete","id":"d1","account_id":"acc2"}'),
        ((K.account("acc1") + "events"),
         b'{"type":"DeviceUpdate","id":"d1","data":{"id":"d1","account_id":"acc2"}}'),
        ((K.account("acc1") + "events"), b'{"type":"UserDelete","id":"u1"}'),  # global kind
        ((K.account("acc1") + "events"), b"\xff\xfe"),
    ]
    for channel, payload in bad:
        pub.publish(channel, payload)
    pub.publish("cal:events", b'{"type":"FooBar","id":"x"}')  # unknown: counted apart
    # After all that garbage, a valid event is still applied.
    raw.hset("cal:users", "u1", user_json("u1", name="Valid"))
    valid = user_json("u1", name="Valid")
    pub.publish("cal:events", b'{"type":"UserUpdate","id":"u1","data":' + valid + b"}")
    await until(lambda: getattr(b.local["users"].peek("u1"), "name", "") == "Valid", 5)
    st = b.sync_state
    assert st.state == "connected"
    assert st.malformed - before.malformed == len(bad)
    assert st.unknown - before.unknown == 1
    assert st.received - before.received == len(bad) + 2
    assert st.disconnects == 0
    # Events that name no key of this channel never touch L1; the DeviceUpdate whose
    # type, id and channel are valid but whose data names another account drops d1.
    assert b.local["devices"].peek(("acc1", "d1")) is None


async def test_malformed_event_naming_a_key_still_invalidates_it(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    await a.set_user(User(id="u1", name="One"))
    await a.set_user(User(id="u2", name="Two"))
    await b.get_user_by_id("u1")
    await b.get_user_by_id("u2")
    before = b.sync_state.malformed
    # Valid type, id and channel; data of the wrong type: the cached u1 may be stale.
    raw.publish("cal:events", b'{"type":"UserUpdate","id":"u1","data":{"id":"u1","name":5}}')
    await until(lambda: b.sync_state.malformed > before, what="malformed counted")
    assert b.local["users"].peek("u1") is None
    assert b.local["users"].peek("u2") is not None  # only the key it names


async def test_unknown_and_malformed_are_logged_rate_limited(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    b = pair[1]
    caplog.set_level("DEBUG", logger="cal_redis.sync")
    for _ in range(5):
        raw.publish("cal:events", b"{nope")
    await until(lambda: b.sync_state.malformed == 5)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "malformed" in r.message]
    # One warning per instance; the repeats went to debug.
    assert len(warnings) == 2


# -- fenced fills -------------------------------------------------------------------------
def delay_replies(cache: CallableCache, gate: Callable[[], Awaitable[None]]) -> None:
    """Hold every HGET/HMGET reply of ``cache`` until ``gate()`` returns (the reply
    comes from the real server; only its delivery to the engine is delayed)."""
    client = client_of(cache, cache.keys.USERS)
    for name in ("hget", "hmget"):
        orig = getattr(client, name)

        async def slow(*args: Any, _orig: Any = orig, **kw: Any) -> Any:
            reply = await _orig(*args, **kw)
            await gate()
            return reply

        setattr(client, name, slow)


async def test_event_wins_over_fill_in_flight(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    await a.set_user(User(id="u1", name="Old"))
    users = b.local["users"]
    await until(lambda: users.peek("u1") is not None)
    users.invalidate("u1")  # force B's next read to fill from Redis
    release = asyncio.Event()
    delay_replies(b, release.wait)
    fill = asyncio.create_task(b.get_user_by_id("u1"))  # reads "Old", held before the L1 fill
    await until(lambda: b._users.flights, what="fill in flight")
    await asyncio.sleep(0.01)
    await a.update_user("u1", name="New")
    await until(lambda: getattr(users.peek("u1"), "name", "") == "New", what="event applied")
    stale_before = users.stats()["stale_fills"]
    release.set()
    assert (await fill).name == "Old"  # type: ignore[union-attr]  # what Redis said then
    assert users.peek("u1").name == "New"  # the fill did not overwrite the event
    assert users.stats()["stale_fills"] == stale_before + 1
    assert (await b.get_user_by_id("u1")).name == "New"  # type: ignore[union-attr]


def hold_after_exec(cache: CallableCache, gate: Callable[[], Awaitable[None]]) -> None:
    """Delay the return of ``cache``'s MULTI/EXEC replies (the server has already
    executed the transaction and published its event) until ``gate()`` returns."""
    client = client_of(cache, cache.keys.USERS)
    make_pipeline = client.pipeline

    def pipeline(*args: Any, **kw: Any) -> Any:
        pipe = make_pipeline(*args, **kw)
        execute = pipe.execute

        async def held_execute(*a: Any, **k: Any) -> Any:
            result = await execute(*a, **k)
            await gate()
            return result

        pipe.execute = held_execute
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]


async def test_newer_event_beats_own_write_landing_late(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    """A's write executes; before A's task resumes, A's subscriber sees its echo and
    then B's newer write. A's late L1 store must not hide B's value."""
    a, b = pair
    await a.set_user(User(id="u1", name="v0"))
    release = asyncio.Event()
    hold_after_exec(a, release.wait)
    write = asyncio.create_task(a.set_user(User(id="u1", name="from A")))
    await until(lambda: a.sync_state.echoes >= 2, what="A's echo")
    await b.set_user(User(id="u1", name="from B"))  # newer, in Redis and on the channel
    await until(lambda: a.sync_state.applied >= 1, what="B's event at A")
    release.set()
    await write
    assert stored_user(raw, "u1").name == "from B"  # type: ignore[union-attr]
    held = a.local["users"].peek("u1")
    assert held is None or held.name == "from B", held
    assert (await a.get_user_by_id("u1")).name == "from B"  # type: ignore[union-attr]


async def test_write_spanning_a_reconnect_does_not_fill_l1(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    """A write that began before a loss (or during it) and completes after the
    resubscription has no pending protection: its late L1 store must not land."""
    a, b = pair
    await a.set_user(User(id="u1", name="v0"))
    release = asyncio.Event()
    hold_after_exec(a, release.wait)
    write = asyncio.create_task(a.set_user(User(id="u1", name="from A")))
    await until(lambda: a.sync_state.echoes >= 2, what="A's echo")
    kill_clients(raw, "pubsub")
    await until(lambda: a.sync_state.reconnects >= 1 and a.sync_state.state == "connected")
    await b.set_user(User(id="u1", name="from B"))
    await until(lambda: getattr(a.local["users"].peek("u1"), "name", "") == "from B")
    release.set()
    await write
    held = a.local["users"].peek("u1")
    assert held is None or held.name == "from B", held


# -- the race test ------------------------------------------------------------------------
RACE_ITERATIONS = int(os.environ.get("CAL_REDIS_RACE_ITERATIONS", "2000"))
RACE_KEYS = ("r0", "r1", "r2")


# A server stall: a script that spins ARGV[1] iterations. (It cannot watch the clock:
# since Redis 7.2 and in Valkey, TIME is frozen while a script runs; DEBUG SLEEP is
# disabled by default.) `stall_rate` calibrates the iterations per microsecond once.
STALL_LUA = "local x = 0 for i = 1, tonumber(ARGV[1]) do x = x + i end return 0"
STALL_CALIBRATION_ITERATIONS = 2_000_000


async def stall_rate(client: aioredis.Redis) -> float:
    """Script iterations per microsecond on this server, from the server's own time
    for the script (INFO commandstats): the fastest of three runs of a few ms, so a
    stall lasts at least about what was asked. Nothing else runs EVAL meanwhile."""

    async def eval_usec() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_eval", {}).get("usec", 0))

    n = STALL_CALIBRATION_ITERATIONS
    best = None
    for _ in range(3):
        before = await eval_usec()
        await client.eval(STALL_LUA, 0, n)
        took = await eval_usec() - before
        best = took if best is None else min(best, took)
    assert best, "INFO commandstats reports no time for EVAL"
    return n / best


async def yields(rng: random.Random) -> None:
    """A random number of event-loop turns (sub-millisecond sleeps cost ~1 ms)."""
    for _ in range(rng.choice((0, 0, 1, 2, 3, 5, 8, 13))):
        await asyncio.sleep(0)


async def test_race_no_stale_reads(
    make_cache: Factory, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Randomized interleavings of reads on B (some with delayed replies, some
    during a server stall) with writes on A (and, in some rounds, on B too):
    after quiescence no instance holds or returns a value older than Redis.

    Two pairs run side by side on disjoint keys, one under RESP2 and one under
    RESP3; each sees the other's events too (more traffic, same guarantees).
    """
    # The server holding cal:users (on a cluster, its master) is the one to stall.
    users_url = url_of(await make_cache(), "cal:users") if "+cluster" in redis_url else redis_url
    stall_client = aioredis.Redis.from_url(users_url)
    checker = aioredis.Redis.from_url(users_url)
    stale: list[str] = []
    per_us = await stall_rate(stall_client)
    stalled_us: list[int] = []

    async def run_pair(proto: int, iterations: int) -> None:
        cfg = CacheConfig(protocol=proto)
        a, b = await make_cache(cfg), await make_cache(cfg)
        barrier = Barrier(a, b)
        keys = [f"p{proto}k{i}" for i in range(3)]
        delay = 0

        async def gate() -> None:
            if delay < 0:
                await asyncio.sleep(0.001)  # a slow reply (event loop timer: ~1 ms)
            for _ in range(delay):
                await asyncio.sleep(0)  # a reply delayed by `delay` event-loop turns

        delay_replies(b, gate)

        async def writer(w: CallableCache, rng: random.Random, tag: str) -> None:
            for j in range(rng.randint(1, 4)):
                await yields(rng)
                k = rng.choice(keys)
                op = rng.random()
                try:
                    if op < 0.45:
                        await w.set_user(User(id=k, name=f"{tag}{j}", email=f"{k}@x"))
                    elif op < 0.85:
                        await w.update_user(k, name=f"{tag}{j}u")
                    else:
                        await w.delete_user(k)
                except NotFoundError:
                    pass

        async def reader(rng: random.Random) -> None:
            for _ in range(rng.randint(1, 4)):
                await yields(rng)
                if rng.random() < 0.7:
                    await b.get_user_by_id(rng.choice(keys))
                else:
                    await b.get_users_batch(keys)

        async def stall(rng: random.Random) -> None:
            # Freeze the server for a moment: every reply in flight is late.
            # (CLIENT PAUSE would do, but it ends on a ~100 ms server tick.)
            await yields(rng)
            us = rng.randint(200, 2000)
            stalled_us.append(us)
            await stall_client.eval(STALL_LUA, 0, max(1, round(us * per_us)))

        for it in range(iterations):
            rng = random.Random(f"{proto}/{it}")
            delay = rng.choice((0, 0, 0, 2, 10, 40, -1))
            jobs = [writer(a, random.Random(rng.random()), f"A{it}."),
                    reader(random.Random(rng.random())),
                    reader(random.Random(rng.random()))]
            if rng.random() < 0.25:
                jobs.append(writer(b, random.Random(rng.random()), f"B{it}."))
            if rng.random() < 0.1:
                jobs.append(stall(random.Random(rng.random())))
            await asyncio.gather(*jobs)
            await barrier(a)
            delay = 0
            raws = await checker.hmget("cal:users", keys)
            truths = [None if d is None else msgspec.json.decode(d, type=User) for d in raws]
            held = [l1_value(c.local["users"].peek(k)) for c in (a, b) for k in keys]
            got = await asyncio.gather(*(c.get_user_by_id(k) for c in (a, b) for k in keys))
            for n, (h, g) in enumerate(zip(held, got, strict=True)):
                truth = truths[n % 3]
                if (h is not None and h != truth) or g != truth:
                    stale.append(f"resp{proto} it={it} {'AB'[n // 3]} key={keys[n % 3]} "
                                 f"held={h} got={g} redis={truth}")
        for c in (a, b):
            assert c.sync_state.malformed == 0 and c.sync_state.disconnects == 0

    started = time.perf_counter()
    try:
        half = (RACE_ITERATIONS + 1) // 2
        await asyncio.gather(run_pair(2, half), run_pair(3, half))
    finally:
        await stall_client.aclose()
        await checker.aclose()
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[race] {2 * half} interleavings in {elapsed:.1f}s, {len(stalled_us)} server stalls "
              f"({sum(stalled_us) / 1000:.0f} ms at {per_us:.0f} iterations/us), stale values: {len(stale)}")
    assert stalled_us, "no round stalled the server"
    assert not stale, stale[:10]


# -- connection loss ----------------------------------------------------------------------
async def test_client_kill_pubsub_recovers(
    pair: tuple[CallableCache, CallableCache], raw: redis.Redis
) -> None:
    a, b = pair
    await a.set_user(User(id="u1", name="v0"))
    await b.get_user_by_id("u1")
    stop = asyncio.Event()

    async def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await a.update_user("u1", name=f"v{i}")
            await asyncio.sleep(0.0005)

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.02)
    killed = kill_clients(raw, "pubsub")
    assert killed >= 2
    await until(lambda: b.sync_state.disconnects >= 1, what="loss detected")
    await asyncio.sleep(0.02)
    stop.set()
    await writer
    await until(lambda: b.sync_state.state == "connected" and b.sync_state.reconnects >= 1)
    await until(lambda: a.sync_state.state == "connected")
    truth = stored_user(raw, "u1")
    held = b.local["users"].peek("u1")
    assert held is None or held == truth
    assert await b.get_user_by_id("u1") == truth
    # New events are applied again.
    await a.update_user("u1", name="after")
    await until(lambda: getattr(b.local["users"].peek("u1"), "name", "") == "after")


@pytest.fixture
async def private_server() -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(port=_free_port())
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def retry(call: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except CalRedisError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_server_restart_degrades_then_resumes(
    make_cache: Factory, private_server: EmbeddedRedis, proto: int
) -> None:
    cfg = CacheConfig(protocol=proto, heartbeat_interval=0.2, read_retries=0)
    a = await make_cache(cfg, url=private_server.url)
    b = await make_cache(cfg, url=private_server.url)
    await a.set_user(User(id="u1", name="before"))
    assert (await b.get_user_by_id("u1")).name == "before"  # type: ignore[union-attr]
    stop = asyncio.Event()

    async def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                await a.set_user(User(id="u1", name=f"w{i}"))
            except CalRedisError:
                await asyncio.sleep(0.01)

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.05)
    await asyncio.to_thread(private_server.stop)
    await until(lambda: b.sync_state.state == "degraded", what="degraded")
    assert not b._ctx.gate.fill_ok and not b._ctx.gate.track
    assert b.local["users"].peek("u1") is None  # flushed at loss
    await asyncio.to_thread(private_server.start)  # same port, empty database
    await until(lambda: b.sync_state.state == "connected", 10, "reconnected")
    barrier = Barrier(b)
    stop.set()
    await writer
    assert b.sync_state.reconnects >= 1 and b._ctx.gate.fill_ok
    await retry(lambda: barrier(a))  # the last write's event has reached b
    check = redis.Redis.from_url(private_server.url)
    try:
        data = check.hget("cal:users", "u1")
    finally:
        check.close()
    truth = None if data is None else msgspec.json.decode(data, type=User)
    assert await retry(lambda: b.get_user_by_id("u1")) == truth  # never the pre-restart value
    await until(lambda: a.sync_state.state == "connected", 10)
    await retry(lambda: a.set_user(User(id="u1", name="after")))
    await until(lambda: getattr(b.local["users"].peek("u1"), "name", "") == "after",
                what="event after restart")


async def test_heartbeat_detects_frozen_server(
    make_cache: Factory, private_server: EmbeddedRedis
) -> None:
    """SIGSTOP: no FIN, no RST; only the heartbeat can notice (bound 2 x interval)."""
    interval = 0.2
    b = await make_cache(CacheConfig(heartbeat_interval=interval), url=private_server.url)
    await b.set_user(User(id="u1", name="x"))
    assert b.local["users"].peek("u1") is not None
    pid = private_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        await until(lambda: b.sync_state.state == "degraded", 3, "heartbeat timeout")
        detected = time.monotonic() - t0
        assert b.local["users"].peek("u1") is None
    finally:
        os.kill(pid, signal.SIGCONT)
    assert detected <= 2 * interval + 0.3, detected
    await until(lambda: b.sync_state.state == "connected", 10, "reconnected")


async def test_event_loop_stall_is_not_a_dead_connection(make_cache: Factory) -> None:
    interval = 0.1
    b = await make_cache(CacheConfig(heartbeat_interval=interval))
    for _ in range(3):
        await asyncio.sleep(2.5 * interval)
        time.sleep(5 * interval)  # noqa: ASYNC251 - block the loop: no PING sent or read
    await asyncio.sleep(3 * interval)
    st = b.sync_state
    assert st.state == "connected" and st.disconnects == 0


# -- app subscriptions --------------------------------------------------------------------
async def test_app_subscriptions(pair: tuple[CallableCache, CallableCache]) -> None:
    a, b = pair
    acc = b.events(account_id="acc42")
    glob = b.events()
    other = b.events(account_id="acc43")
    mine = a.events(account_id="acc42")
    await a.set_device("acc42", Device(id="d1", name="P"))
    await a.set_user(User(id="u1"))
    await a.publish_account_event("acc42", Event(type="CallStarted", id="c1"))
    e1 = await asyncio.wait_for(anext(acc), 3)
    e2 = await asyncio.wait_for(anext(acc), 3)
    assert (e1.type, e1.id, e1.account_id) == ("DeviceCreate", "d1", "acc42")
    assert e1.has_data and msgspec.json.decode(e1.data, type=Device).name == "P"
    assert (e2.type, e2.id) == ("CallStarted", "c1")
    assert (await asyncio.wait_for(anext(glob), 3)).type == "UserCreate"
    assert (await asyncio.wait_for(anext(mine), 3)).type == "DeviceCreate"  # own events too
    assert other.qsize() == 0
    assert b.sync_state.app_streams == 3

    # Leaving the loop unregisters the stream.
    got = []
    fresh = b.events(account_id="acc42")
    await a.publish_account_event("acc42", Event(type="Ping", id="p1"))
    async for ev in fresh:
        got.append(ev)
        break
    del fresh
    assert [e.type for e in got] == ["Ping"]
    assert b.sync_state.app_streams == 3  # the broken-out stream is gone
    async with b.events() as s:
        assert b.sync_state.app_streams == 4
    assert s.closed and b.sync_state.app_streams == 3

    with pytest.raises(ValidationError):
        b.events(account_id="bad id")
    with pytest.raises(ValidationError):
        b.events(maxsize=0)

    # Closing the cache ends open iterations.
    waiting = asyncio.create_task(anext(other))
    await asyncio.sleep(0.01)
    await b.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 3)
    with pytest.raises(CalRedisError):
        b.events()


async def test_slow_consumer_overflows_without_blocking_l1(
    pair: tuple[CallableCache, CallableCache],
) -> None:
    a, b = pair
    stream = b.events(account_id="acc1", maxsize=5)
    barrier = Barrier(b)
    for i in range(50):
        await a.set_device("acc1", Device(id="d1", name=f"n{i}"))
    await barrier(a)
    # L1 followed every event although nobody consumed the stream.
    assert b.local["devices"].peek(("acc1", "d1")).name == "n49"
    assert stream.dropped == 45 and stream.qsize() == 5
    assert b.sync_state.app_overflow == 45
    names = [msgspec.json.decode((await anext(stream)).data, type=Device).name for _ in range(5)]
    assert names == [f"n{i}" for i in range(5)]  # the oldest were kept, the newest dropped


async def test_event_handler(pair: tuple[CallableCache, CallableCache]) -> None:
    a, b = pair
    seen: list[str] = []

    def boom(ev: Event) -> None:
        raise RuntimeError("handler bug")

    remove = b.add_event_handler(lambda ev: seen.append(ev.type))
    b.add_event_handler(boom)
    await a.set_user(User(id="u1"))
    await until(lambda: seen == ["UserCreate"])
    remove()
    await a.delete_user("u1")
    await until(lambda: b.local["users"].peek("u1") is None and b.sync_state.applied >= 2)
    assert seen == ["UserCreate"]
    assert b.sync_state.state == "connected"
