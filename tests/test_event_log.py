"""The event log: what the write scripts append, retention, and the replay of a gap in
the event subscription (``CacheConfig(event_log="replay")``) instead of a flush."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cal_redis import CacheConfig, CallableCache, ConfigurationError, Device, Event, User
from cal_redis.models import FlowState
from keyspace import K
from redis_stats import SubscriptionGap, client_of
from waiting import until

pytestmark = pytest.mark.l1  # L1 behaviour: both implementations

#: The gap tests count reads and replayed events exactly, which on a cluster depends on
#: when each event crosses the cluster bus (tens of ms on Redis 7.0, before or after
#: the gap's edges), so they run on one server; the cluster runs the log tests above.
STANDALONE_GAP = pytest.mark.standalone_only

REPLAY = CacheConfig(event_log="replay", heartbeat_interval=0.2)
DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"


def entries(raw: Any, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), f) for i, f in raw.xrange(key)]


async def test_writes_append_their_event_and_publish_its_id(
    make_cache: Any, raw: Any, quiesce: Any
) -> None:
    a = await make_cache()
    b = await make_cache()
    stream = b.events()
    acc_stream = b.events("acc1")
    await a.set_user(User(id="u1", name="One"))
    await a.set_device("acc1", Device(id="d1", sip_username="sip-d1"))
    await a.set_flow_state("acc1", FlowState(id="f1", state="menu"))
    await a.set_trunk_ip("192.0.2.1", "acc1")
    quiesce()
    [(uid, ufields)] = entries(raw, K.table_log(K.USERS))
    got = {e.type: e for e in [await asyncio.wait_for(stream.__anext__(), 3)
                               for _ in range(2)]}  # on a cluster, in any order
    assert got["UserCreate"].log_id == uid
    logged = msgspec.json.decode(ufields[b"e"], type=Event)
    assert logged.type == "UserCreate" and logged.id == "u1" and not logged.log_id
    acc = entries(raw, K.account_log("acc1"))
    assert [msgspec.json.decode(f[b"e"], type=Event).type for _, f in acc] == [
        "DeviceCreate", "FlowStateUpdate"]
    assert (await asyncio.wait_for(acc_stream.__anext__(), 3)).log_id == acc[0][0]
    assert got["TrunkIpUpdate"].log_id == ""  # no log shares its slot
    for table in K.TABLES:
        if table != K.USERS:
            assert raw.exists(K.table_log(table)) == 0


async def test_hand_published_events_of_l1_kinds_are_logged(make_cache: Any, raw: Any) -> None:
    a = await make_cache()
    await a.invalidate("users", ["u1", "u2"])
    await a.publish_account_event("acc1", Event(type="CallStarted", id="c1"))
    await a.invalidate_account("acc1")
    [(_, fields)] = entries(raw, K.table_log(K.USERS))
    assert msgspec.json.decode(fields[b"e"], type=Event).ids == ("u1", "u2")
    # Application events change nothing in L1: not logged; TenantInvalidate is.
    assert [msgspec.json.decode(f[b"e"], type=Event).type
            for _, f in entries(raw, K.account_log("acc1"))] == ["TenantInvalidate"]


async def test_retention_trims_old_events_by_minid(make_cache: Any, raw: Any) -> None:
    a = await make_cache(CacheConfig(event_log_retention=1))
    await a.set_user(User(id="u1", name="One"))
    [(first, _)] = entries(raw, K.table_log(K.USERS))
    await asyncio.sleep(1.1)
    await a.set_user(User(id="u1", name="Two"))
    left = entries(raw, K.table_log(K.USERS))
    assert len(left) == 1 and left[0][0] != first
    info = raw.xinfo_stream(K.table_log(K.USERS))
    assert (info["entries-added"], info["length"]) == (2, 1)


async def test_a_burst_is_capped_by_the_approximate_maxlen(make_cache: Any, raw: Any) -> None:
    a = await make_cache(CacheConfig(event_log_max_len=100))
    await asyncio.gather(*(a.set_user(User(id=f"u{i}", name="x")) for i in range(600)))
    n = raw.xlen(K.table_log(K.USERS))
    assert 100 <= n < 300, n  # whole stream nodes (100 entries) are trimmed


def test_config_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="event_log"):
        CacheConfig(event_log="replay-please")
    with pytest.raises(ConfigurationError, match="event_log_retention"):
        CacheConfig(event_log_retention=0.5)
    with pytest.raises(ConfigurationError, match="event_log_max_len"):
        CacheConfig(event_log_max_len=10)


# -- replay -----------------------------------------------------------------------------

USERS = 200


async def _hot(caches: list[CallableCache], raw: Any, writer: CallableCache,
               quiesce: Any = None) -> None:
    for i in range(USERS):
        await writer.set_user(User(id=f"u{i}", name=f"v0-{i}", email=f"u{i}@x.io"))
    if quiesce is not None:
        quiesce()  # on a cluster: every event above has reached every subscriber
    for c in caches:
        await until(lambda c=c: c.sync_state.state == "connected", 5, "subscribed")
        await c.get_users_batch([f"u{i}" for i in range(USERS)])
        assert len(c.local["users"]) == USERS


async def _gap(gap: SubscriptionGap, caches: list[CallableCache], during: Any) -> None:
    before = [c.sync_state.disconnects for c in caches]
    gap.begin()
    try:
        for c, n in zip(caches, before, strict=True):
            await until(lambda c=c, n=n: c.sync_state.disconnects > n, 5, "the loss")
        await during()
    finally:
        gap.end()
    for c in caches:
        await until(lambda c=c: c.sync_state.state == "connected", 10, "resubscribed")


async def _reads_and_stale(c: CallableCache, raw: Any) -> tuple[int, int]:
    """Users read from Redis (L1 misses) to read every user, and how many were stale."""
    before = c.local["users"].stats()["misses"]
    got = await c.get_users_batch([f"u{i}" for i in range(USERS)])
    reads = c.local["users"].stats()["misses"] - before
    stale = 0
    for i, user in enumerate(got):
        stored = raw.hget(K.USERS, f"u{i}")
        if user is None or msgspec.json.encode(user) != stored:
            stale += 1
    return reads, stale


@pytest.fixture
def gap(raw: Any, redis_url: str) -> Any:
    g = SubscriptionGap(raw, redis_url)
    try:
        yield g
    finally:
        g.close()


@pytest.mark.parametrize("mode", ["replay", "flush"])
@STANDALONE_GAP
async def test_a_gap_replays_only_what_changed(
    make_cache: Any, raw: Any, gap: SubscriptionGap, quiesce: Any, mode: str
) -> None:
    config = REPLAY if mode == "replay" else CacheConfig(heartbeat_interval=0.2)
    a, b = await make_cache(config), await make_cache(config)
    writer = await make_cache(config, url=gap.url)
    await _hot([a, b], raw, writer, quiesce)

    async def during() -> None:
        for i in range(0, 20, 2):  # 10 writes no instance hears of
            await writer.set_user(User(id=f"u{i}", name=f"v1-{i}", email=f"new{i}@x.io"))

    await _gap(gap, [a, b], during)
    quiesce()
    for c in (a, b):
        reads, stale = await _reads_and_stale(c, raw)
        assert stale == 0
        state = c.sync_state
        if mode == "replay":  # only the 10 changed users are read again
            assert (state.replays, state.replayed, state.replay_flushes) == (1, 10, 0)
            assert reads == 10
        else:
            assert state.replays == 0 and reads == USERS
        # The renamed idents resolve to the new values, the old ones to nothing.
        assert (await c.get_user_by_ident("new4@x.io")).name == "v1-4"  # type: ignore[union-attr]
        assert await c.get_user_by_ident("u4@x.io") is None


@STANDALONE_GAP
async def test_a_replay_never_serves_what_the_gap_changed_before_it_is_done(
    make_cache: Any, raw: Any, gap: SubscriptionGap
) -> None:
    """While the subscription is down, L1 is held but not served: a read goes to Redis
    and sees the write made during the gap at once."""
    a = await make_cache(REPLAY)
    writer = await make_cache(REPLAY, url=gap.url)
    await _hot([a], raw, writer)
    gap.begin()
    try:
        await until(lambda: a.sync_state.state == "degraded", 5, "the loss")
        await writer.set_user(User(id="u3", name="during"))
        assert (await a.get_user("u3")).name == "during"  # type: ignore[union-attr]
    finally:
        gap.end()
    await until(lambda: a.sync_state.state == "connected", 10, "resubscribed")
    assert (await a.get_user("u3")).name == "during"  # type: ignore[union-attr]


@STANDALONE_GAP
async def test_a_log_that_no_longer_covers_the_gap_flushes_its_namespace(
    make_cache: Any, raw: Any, gap: SubscriptionGap
) -> None:
    a = await make_cache(REPLAY)
    writer = await make_cache(CacheConfig(event_log_max_len=100), url=gap.url)
    await _hot([a], raw, writer)

    async def during() -> None:  # enough writes to trim the log past a's last id
        for i in range(300):
            await writer.set_user(User(id=f"u{i % USERS}", name=f"burst-{i}"))

    await _gap(gap, [a], during)
    state = a.sync_state
    assert state.replays == 1 and state.replay_flushes == 1
    assert len(a.local["users"]) == 0
    assert (await _reads_and_stale(a, raw))[1] == 0


@STANDALONE_GAP
async def test_an_account_log_covers_its_accounts_entries(
    make_cache: Any, raw: Any, gap: SubscriptionGap
) -> None:
    a = await make_cache(REPLAY)
    writer = await make_cache(REPLAY, url=gap.url)
    for acc in ("acc1", "acc2"):
        for i in range(5):
            await writer.set_device(acc, Device(id=f"d{i}", sip_username=f"{acc}-{i}"))
            await a.get_device(acc, f"d{i}")

    async def during() -> None:
        await writer.set_device("acc2", Device(id="d1", sip_username="changed"))

    await _until_connected(a)
    await _gap(gap, [a], during)
    before = a.local["devices"].stats()["misses"]
    for acc in ("acc1", "acc2"):
        for i in range(5):
            dev = await a.get_device(acc, f"d{i}")
            assert dev is not None
            assert dev.sip_username == ("changed" if (acc, i) == ("acc2", 1) else f"{acc}-{i}")
    assert a.local["devices"].stats()["misses"] - before == 1
    assert a.sync_state.replayed == 1


async def _until_connected(c: CallableCache) -> None:
    await until(lambda: c.sync_state.state == "connected", 5, "subscribed")


@STANDALONE_GAP
async def test_an_unlogged_event_switches_replay_off(
    make_cache: Any, raw: Any, gap: SubscriptionGap, caplog: pytest.LogCaptureFixture
) -> None:
    a = await make_cache(REPLAY)
    writer = await make_cache(REPLAY, url=gap.url)
    await _hot([a], raw, writer)
    event = msgspec.json.encode(Event(type="UserUpdate", id="u5", origin="elsewhere"))
    raw.publish(K.EVENTS, event)  # a writer that publishes but does not log
    await until(lambda: a.sync_state.unlogged == 1, 3, "the unlogged event")
    assert "carries no log_id" in caplog.text

    async def during() -> None:
        await writer.set_user(User(id="u7", name="x"))

    await _gap(gap, [a], during)
    state = a.sync_state
    assert state.replays == 0  # flushed instead
    assert (await _reads_and_stale(a, raw)) == (USERS, 0)


def reference_script() -> str:
    """The reference write + log + publish script of docs/wire-format.md."""
    text = DOC.read_text()
    match = re.search(r"<!-- reference-log-script -->\s*```lua\n(.*?)```", text, re.S)
    assert match, "the reference script is missing from docs/wire-format.md"
    return match.group(1)


@STANDALONE_GAP
async def test_a_foreign_writer_using_the_documented_script_is_replayed(
    make_cache: Any, raw: Any, gap: SubscriptionGap
) -> None:
    a = await make_cache(REPLAY)
    writer = await make_cache(REPLAY, url=gap.url)
    await _hot([a], raw, writer)
    foreign = client_of(writer, K.USERS)
    script = reference_script()
    value = msgspec.json.encode(User(id="u9", name="foreign"))
    event = msgspec.json.encode(Event(type="UserUpdate", id="u9", origin="php-writer"))

    async def during() -> None:
        await foreign.eval(script, 2, K.USERS, K.table_log(K.USERS),
                           "u9", value, K.EVENTS, event, 600_000, 100_000)

    await _gap(gap, [a], during)
    assert a.sync_state.replayed == 1
    assert (await a.get_user("u9")).name == "foreign"  # type: ignore[union-attr]
    assert a.sync_state.unlogged == 0
