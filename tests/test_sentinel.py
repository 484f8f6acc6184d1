"""Redis Sentinel: the ``redis+sentinel://`` URL, connecting through real sentinels, and
a ``SENTINEL FAILOVER`` under concurrent reads and writes.

The URL tests need no server. The others (marked ``sentinel``) start their own
deployments (:class:`~cal_redis.embedded.EmbeddedSentinel`: a primary, a replica and
one to three ``redis-sentinel`` processes on loopback, with short timeouts), stopped
at the end of the module or the test. The failover test prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, User
from cal_redis.config import redact_url
from cal_redis.embedded import EmbeddedRedis, EmbeddedRedisError, EmbeddedSentinel
from cal_redis.errors import CalRedisError, ConfigurationError, ConnectionError
from cal_redis.remote import SentinelRemote
from cal_redis.remote._sentinel import DEFAULT_SENTINEL_PORT, parse_sentinel_url
from waiting import until


# -- the URL ---------------------------------------------------------------------------------
def test_url_grammar() -> None:
    url = ("redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/my%20svc/3"
           "?sentinel_password=sp&sentinel_username=su&client_name=x")
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", DEFAULT_SENTINEL_PORT),
                                ("::1", 26381))
    assert parsed.service == "my svc" and parsed.db == 3
    assert (parsed.sentinel_username, parsed.sentinel_password) == ("su", "sp")
    # the data servers keep the credentials, the database and their own options
    assert parsed.node_url("10.0.0.9", 6379) == "redis://app:s%40cret@10.0.0.9:6379/3?client_name=x"
    assert parse_sentinel_url("rediss+sentinel://h/cal").node_url("h", 1) == "rediss://h:1/0"
    safe = redact_url(url)
    assert "s%40cret" not in safe and "sp" not in safe.split("?")[1] and "***" in safe


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://h:26379", "no service name"),
    ("redis+sentinel://h:26379/", "no service name"),
    ("redis+sentinel:///cal", "no sentinel given"),
    ("redis+sentinel://h:x/cal", "bad port in 'h:x'"),
    ("redis+sentinel://h:0/cal", "bad node 'h:0'"),
    ("redis+sentinel://h/cal/one", "the db a number"),
    ("redis+sentinel://h/cal/0/x", "/<service>[/<db>]"),
    ("redis+sentinel://h/cal?db=2", "give the database in the path"),
    ("redis+sentinels://h/cal", "scheme must be redis+sentinel"),
])
def test_url_errors_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis Sentinel URL") as info:
        parse_sentinel_url(url)
    assert problem in str(info.value)


async def test_url_and_topology_checked_before_any_io() -> None:
    # port 1 has no sentinel: a ConfigurationError proves nothing was contacted
    with pytest.raises(ConfigurationError, match="needs a redis\\+sentinel:// URL"):
        await CallableCache.connect("redis://127.0.0.1:1/0", config=CacheConfig(topology="sentinel"))
    for topology in ("standalone", "cluster"):
        with pytest.raises(ConfigurationError, match="is a Redis Sentinel URL"):
            await CallableCache.connect("redis+sentinel://127.0.0.1:1/cal",
                                        config=CacheConfig(topology=topology))
    with pytest.raises(ConfigurationError, match="no service name"):
        await CallableCache.connect("redis+sentinel://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="ssl_ca_certs: a TLS option"):
        await CallableCache.connect("redis+sentinel://127.0.0.1:1/cal", ssl_ca_certs="/ca.pem")
    with pytest.raises(ConfigurationError, match="retry_on_timeout"):
        await CallableCache.connect("redis+sentinel://127.0.0.1:1/cal", retry_on_timeout=True)


# -- one deployment for the module ---------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment() -> Iterator[EmbeddedSentinel]:
    """A primary, one replica and one sentinel (no failover is asked of it)."""
    with EmbeddedSentinel(sentinels=1) as d:
        yield d


@pytest.fixture
def sentinel_url(deployment: EmbeddedSentinel) -> str:
    for server in deployment.servers:
        if deployment.role(server) == "master":
            deployment.data_command(server, "FLUSHALL")
    return deployment.url


def _clients(d: EmbeddedSentinel, server: EmbeddedRedis, kind: str = "normal") -> list[str]:
    """The client names connected to ``server`` (``CLIENT LIST TYPE kind``; none when
    the connection is cut, as Sentinel kills a server's clients when promoting it)."""
    try:
        text = str(d.data_command(server, "CLIENT", "LIST", "TYPE", kind))
    except (OSError, EmbeddedRedisError):
        return []
    return [field.split("=", 1)[1] for line in text.splitlines() for field in line.split()
            if field.startswith("name=")]


@pytest.mark.l1
@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_reads_writes_and_events_through_the_sentinel(
    deployment: EmbeddedSentinel, sentinel_url: str, l1_impl: str
) -> None:
    primary = deployment.primary()
    a = await CallableCache.connect(sentinel_url, client_name="cal-test-a")
    b = await CallableCache.connect(sentinel_url)
    try:
        assert isinstance(a.remote, SentinelRemote)
        assert a.remote.primary == (deployment.host, primary.port)
        assert a.keys.style == "standalone"
        await a.set_user(User(id="u1", name="one"))
        assert (await b.get_user_by_id("u1")).name == "one"  # type: ignore[union-attr]
        assert b.local["users"].peek("u1") is not None  # b's L1 holds it
        await a.set_user(User(id="u1", name="two"))  # b hears the event on the primary
        await until(lambda: b.local["users"].peek("u1") is None
                    or b.local["users"].peek("u1").name == "two", what="b's L1 refreshed")
        assert (await b.get_user_by_id("u1")).name == "two"  # type: ignore[union-attr]
        # commands and both subscribers are on the primary, the option reached it
        assert "cal-test-a" in _clients(deployment, primary)
        subs = _clients(deployment, primary, "pubsub")
        assert {"cal-redis-sync-" + c.instance_id[:12] for c in (a, b)} <= set(subs)
        assert a.sync_state.state == b.sync_state.state == "connected"
        assert a.remote.stats()["failovers"] == 0
    finally:
        await a.close()
        await b.close()


@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_every_new_connection_asks_the_sentinels(
    deployment: EmbeddedSentinel, sentinel_url: str
) -> None:
    def commands() -> int:  # what the sentinel was asked so far (this INFO included)
        stats = str(deployment.sentinel_command(0, "INFO", "stats"))
        line = next(x for x in stats.splitlines() if x.startswith("total_commands_processed:"))
        return int(line.split(":")[1])

    config = CacheConfig(heartbeat_interval=60)  # no PING to the sentinel meanwhile
    async with await CallableCache.connect(sentinel_url, config=config) as cache:
        await cache.remote.ping()
        before = commands()
        await cache.remote.ping()  # a pooled connection: the sentinel is not asked
        assert commands() - before == 1
        before = commands()
        await cache.remote.client.connection_pool.disconnect()
        await cache.remote.ping()  # a new connection: the primary is asked for again
        assert commands() - before >= 2


def _dead_port() -> int:
    """A loopback port nobody listens on."""
    free = EmbeddedRedis()
    free.start()
    free.stop()
    return free.port


@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_an_older_configuration_epoch_is_not_followed(
    deployment: EmbeddedSentinel, sentinel_url: str, caplog: Any
) -> None:
    """An answer older than one already seen (a sentinel that has not heard of a
    failover yet) is skipped while another sentinel may know better; when every
    sentinel answers so, the deployment was reset, and it is followed (warning)."""
    port = deployment.sentinel_ports[0]
    dead = _dead_port()
    url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{port}/cal"
    async with await CallableCache.connect(url, config=CacheConfig(connect_timeout=0.5)) as cache:
        remote = cache.remote
        assert isinstance(remote, SentinelRemote)
        remote.sentinels.epoch = 1000  # as if a failover of epoch 1000 had been seen
        await remote.client.connection_pool.disconnect()
        with pytest.raises(ConnectionError, match="stale \\(configuration epoch 0 < 1000\\)"):
            await remote.ping()
    async with await CallableCache.connect(sentinel_url) as cache:
        remote = cache.remote
        assert isinstance(remote, SentinelRemote)
        remote.sentinels.epoch = 1000
        await remote.client.connection_pool.disconnect()
        assert await remote.ping()  # the only sentinel says so: followed
        assert remote.sentinels.epoch == 0
        assert "sentinels reset?" in caplog.text


@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_unknown_service_and_unreachable_sentinels(deployment: EmbeddedSentinel) -> None:
    port = deployment.sentinel_ports[0]
    with pytest.raises(ConfigurationError, match=r"no primary of service 'nope'.*sentinel monitor"):
        await CallableCache.connect(f"redis+sentinel://127.0.0.1:{port}/nope")
    dead = _dead_port()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{dead}"):
        await CallableCache.connect(f"redis+sentinel://127.0.0.1:{dead}/cal",
                                    config=CacheConfig(connect_timeout=0.5))


@pytest.mark.sentinel
@pytest.mark.standalone_only
def test_doctor_says_which_primary(deployment: EmbeddedSentinel, sentinel_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cal_redis", "doctor", "--url", sentinel_url],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    primary = deployment.primary()
    assert f"sentinel         service cal: primary {deployment.host}:{primary.port}" in proc.stdout


@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_data_and_sentinel_passwords() -> None:
    d = await asyncio.to_thread(
        EmbeddedSentinel(password="data pw", sentinel_password="sentinel pw").start)
    try:
        async with await CallableCache.connect(d.url) as cache:
            await cache.set_user(User(id="u1", name="x"))
            assert (await cache.get_user_by_id("u1")) is not None
            assert "data%20pw" not in repr(cache) and "sentinel%20pw" not in repr(cache)
        wrong = d.url.replace("sentinel_password=sentinel%20pw", "sentinel_password=nope")
        with pytest.raises(ConnectionError, match="no primary of service 'cal'"):
            await CallableCache.connect(wrong)
        none = d.url.split("?")[0]
        with pytest.raises(ConnectionError, match="from the sentinels"):
            await CallableCache.connect(none)
    finally:
        d.stop()


# -- failover ------------------------------------------------------------------------------------
@pytest.fixture
async def failover_deployment() -> AsyncIterator[EmbeddedSentinel]:
    """A deployment of its own (a failover changes it): three sentinels, quorum 2."""
    d = EmbeddedSentinel(sentinels=3)
    try:
        await asyncio.to_thread(d.start)
        yield d
    finally:
        d.stop()


async def _failover_under_load(d: EmbeddedSentinel, event_log: str = "flush") -> dict[str, Any]:
    """Two caches write (disjoint users) and read, a third without L1 reads Redis;
    SENTINEL FAILOVER; figures after quiescence (module docstring)."""
    cfg = CacheConfig(heartbeat_interval=0.25, event_log=event_log)
    old = d.primary()
    new = next(s for s in d.servers if s is not old)
    fixed = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(20)]}
    everyone = fixed["a"] + fixed["b"]
    acked: dict[str, str] = {}
    journal: list[tuple[str, float, float]] = []  # (fresh user id, sent, acknowledged)
    failures: list[BaseException] = []
    stop = asyncio.Event()
    marks: dict[str, float] = {}

    async def writer(cache: CallableCache, tag: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            uid = fixed[tag][n % len(fixed[tag])]  # one writer per id: its last ack is the truth
            try:
                await cache.set_user(User(id=uid, name=f"{tag}{n}"))
                acked[uid] = f"{tag}{n}"
                fresh, sent = f"{tag}-j{n}", time.monotonic()
                await cache.set_user(User(id=fresh, name="j"))  # a write that is never overwritten
                journal.append((fresh, sent, time.monotonic()))
            except Exception as err:
                failures.append(err)
                await asyncio.sleep(0.005)

    async def reader(cache: CallableCache, probe: bool) -> None:
        while not stop.is_set():
            try:
                await cache.get_users_batch(everyone[::3])
                if probe and "promoted" in marks and "reads" not in marks:
                    marks["reads"] = time.monotonic()
            except Exception as err:
                failures.append(err)
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)  # L1 hits complete without yielding to the loop

    async with contextlib.AsyncExitStack() as stack:
        a, b, probe = [await CallableCache.connect(d.url, config=replace(cfg, local_cache=local))
                       for local in (True, True, False)]
        for cache in (a, b, probe):
            stack.push_async_callback(cache.close)
        for uid in everyone:
            await a.set_user(User(id=uid, name="v0"))
            acked[uid] = "v0"
        tasks = [asyncio.create_task(c) for c in (writer(a, "a"), writer(b, "b"),
                                                  reader(a, False), reader(b, False),
                                                  reader(probe, True))]
        try:
            await asyncio.sleep(0.3)
            names = {"cal-redis-sync-" + c.instance_id[:12] for c in (a, b)}
            t0 = time.monotonic()
            d.failover()
            deadline = t0 + 6  # the figures are read before Sentinel demotes the old primary
            while time.monotonic() < deadline and not {"promoted", "subscribed"} <= set(marks):
                now = time.monotonic()
                if "promoted" not in marks and d.role(new) == "master":
                    marks["promoted"] = now
                if "subscribed" not in marks and "promoted" in marks \
                        and names <= set(_clients(d, new, "pubsub")) \
                        and a.sync_state.state == b.sync_state.state == "connected":
                    marks["subscribed"] = now
                await asyncio.sleep(0.005)
            await asyncio.sleep(1.0)  # keep the load on after both
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        await asyncio.sleep(0.5)  # quiescence: the last events delivered
        truth = redis.Redis(host=d.host, port=new.port)
        stack.callback(truth.close)
        table = a.keys.USERS
        stored = {uid: json.loads(raw)["name"] if (raw := truth.hget(table, uid)) else None
                  for uid in everyone}
        stale = 0
        for cache in (a, b):
            for uid in everyone:
                got = await cache.get_user_by_id(uid)
                stale += (got.name if got else None) != stored[uid]
            for got in await cache.get_users_batch(everyone):
                stale += (got.name if got else None) != stored[got.id if got else ""]
        present = truth.hmget(table, [uid for uid, _, _ in journal]) if journal else []
        promoted = marks.get("promoted")
        first_new = min((acked_at for (_, sent, acked_at), value in zip(journal, present,
                                                                        strict=True)
                         if promoted is not None and sent > promoted and value is not None),
                        default=None)
        return {
            "promotion_s": round(promoted - t0, 3) if promoted else None,
            "first_write_on_new_primary_s": round(first_new - t0, 3) if first_new else None,
            "subscribers_on_new_primary_s":
                round(marks["subscribed"] - t0, 3) if "subscribed" in marks else None,
            "probe_reads_ok_after_promotion_s":
                round(marks["reads"] - promoted, 3) if "reads" in marks and promoted else None,
            "acknowledged_writes": len(journal) + len(acked),
            "lost_acknowledged_writes": sum(value is None for value in present)
            + sum(stored[uid] != acked[uid] for uid in everyone),
            "stale_reads": stale,
            "errors": len(failures),
            "error_types": sorted({type(e).__name__ for e in failures}),
            "not_cal_redis_errors":
                [repr(e) for e in failures if not isinstance(e, CalRedisError)][:3],
            "followed": (a.remote.stats()["failovers"], b.remote.stats()["failovers"]),
            "primary": (a.remote.primary_name, b.remote.primary_name,  # type: ignore[attr-defined]
                        probe.remote.primary_name),  # type: ignore[attr-defined]
            "new_primary": f"{d.host}:{new.port}",
        }


@pytest.mark.l1
@pytest.mark.sentinel
@pytest.mark.standalone_only
@pytest.mark.parametrize("event_log", ["flush", "replay"])
async def test_failover_under_load(failover_deployment: EmbeddedSentinel, l1_impl: str,
                                   event_log: str, capsys: Any) -> None:
    """Also with ``event_log="replay"``, where a lost subscription does not flush L1:
    the new primary is another server (another ``run_id``), so L1 is flushed all the same."""
    figures = await _failover_under_load(failover_deployment, event_log)
    with capsys.disabled():
        print(f"\n[sentinel] SENTINEL FAILOVER under load ({l1_impl} L1, event_log={event_log}): "
              f"{figures}")
    assert figures["promotion_s"] is not None, figures
    # writes reach the new primary soon after the promotion (not ~10 s later, when
    # Sentinel demotes the old one), and both subscribers moved there
    assert figures["first_write_on_new_primary_s"] is not None, figures
    assert figures["first_write_on_new_primary_s"] - figures["promotion_s"] < 5, figures
    assert figures["subscribers_on_new_primary_s"] is not None, figures
    assert figures["subscribers_on_new_primary_s"] - figures["promotion_s"] < 5, figures
    assert figures["stale_reads"] == 0, figures
    # Redis replication is asynchronous; the cache takes the replica as the primary
    # when the leader announces its promotion, before it happens, so only a write
    # already on its way to the old primary when the event loop resumed from a stall
    # could be lost (about 1,500 are when only +switch-master is followed)
    assert figures["lost_acknowledged_writes"] <= 10, figures
    assert figures["not_cal_redis_errors"] == [], figures
    assert set(figures["primary"]) == {figures["new_primary"]}, figures
    assert figures["followed"] == (1, 1), figures


@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_a_missed_announcement_is_caught_up_when_the_sentinel_is_back(
    failover_deployment: EmbeddedSentinel,
) -> None:
    """A cache deaf to the sentinels keeps writing to the old primary (writes the new
    one never gets); once subscribed again it asks the sentinels and follows."""
    d = failover_deployment
    old = d.primary()
    new = next(s for s in d.servers if s is not old)
    cache = await CallableCache.connect(d.url)
    try:
        remote = cache.remote
        assert isinstance(remote, SentinelRemote)
        for task in remote._listeners:  # deaf: no announcement reaches this cache
            task.cancel()
        await asyncio.wait(remote._listeners)
        d.failover()
        await until(lambda: d.primary() is new, timeout=10, what="the sentinels name the replica")
        await cache.set_user(User(id="u1", name="to-the-old-primary"))
        assert d.data_command(new, "HGET", cache.keys.USERS, "u1") is None  # lost
        assert (await cache.get_user_by_id("u1")) is not None  # and L1 holds it
        loop = asyncio.get_running_loop()
        remote._listeners = [loop.create_task(remote._listen(s)) for s in remote.sentinels.sentinels]
        await until(lambda: remote.primary == (d.host, new.port), timeout=5, what="followed")
        assert cache.local["users"].peek("u1") is None  # flushed
        assert await cache.get_user_by_id("u1") is None  # what the new primary holds
        await cache.set_user(User(id="u2", name="to-the-new-primary"))
        assert d.data_command(new, "HGET", cache.keys.USERS, "u2") is not None
    finally:
        await cache.close()



@pytest.mark.sentinel
@pytest.mark.standalone_only
async def test_an_abandoned_failover_is_followed_back(
    failover_deployment: EmbeddedSentinel,
) -> None:
    """The replica the leader starts promoting is frozen: the promotion times out
    (``-failover-abort-slave-timeout`` after ``failover-timeout``, 3 s) and the cache,
    which had taken the replica as the primary at once, comes back to the old one."""
    d = failover_deployment
    old = d.primary()
    replica = next(s for s in d.servers if s is not old)
    config = CacheConfig(socket_timeout=0.5, connect_timeout=0.5)
    cache = await CallableCache.connect(d.url, config=config)
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        remote = cache.remote
        assert isinstance(remote, SentinelRemote)
        d.failover()
        await until(lambda: remote.primary == (d.host, replica.port), timeout=5,
                    what="the replica taken as the primary as its promotion begins")
        await until(lambda: remote.primary == (d.host, old.port), timeout=10,
                    what="the old primary taken back once the failover is abandoned")
        await cache.set_user(User(id="u1", name="after"))
        assert d.data_command(old, "HGET", cache.keys.USERS, "u1") is not None
        assert remote.stats()["failovers"] == 2
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        await cache.close()
