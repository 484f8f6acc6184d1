"""Scenarios of ``python -m cal_redis bench``: our operation beside the raw client.

Each scenario owns a few *sides* (ours, the baseline, sometimes a third) sharing the
same data, client and event loop. A side is ``async (n) -> list[float]``: it runs ``n``
samples and returns seconds per operation for each. Work done to set a sample up
(invalidating L1 before an L2 read, flushing it before a batch) happens outside the
timed region, between ``perf_counter`` reads. Nanosecond-scale sides (L1 hits) time a
block of calls per sample and return the block mean, since a clock read costs about as
much as the call. The CPU-bound rows (L1 hits, batches) compare the fastest sample of
each side (``stat="min"``), which a loaded machine can only slow down, not the median,
which drifts with the load.
The runner (:mod:`cal_redis.bench._runner`) alternates the sides round by
round (A B, B A, ...) so drift of a noisy machine hits both alike.

Baselines are redis-py as a user would call it by hand: a stock ``redis.asyncio``
client (``stock``: same server, same hiredis reply parser, redis-py's own command
packing). cal-redis's own client packs commands with hiredis (see
:mod:`cal_redis.remote`), so the L2 and batch scenarios also time the same commands
sent on cal-redis's client (``raw``): that row isolates what the cache layers add.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

import msgspec

from .. import codec
from ..cache import CallableCache
from ..config import CacheConfig
from ..keys import KeyBuilder
from ..models import AgentState, AgentStatus, User, now_ms
from ..remote.baseline import RawRedis, raw_client

__all__ = (
    "BENCH_CONFIG",
    "N_USERS",
    "USER_HASH",
    "Row",
    "Scenario",
    "Metering",
    "Side",
    "make_user",
    "seed_users",
    "stock_client",
    "cache_scenarios",
    "ops_scenarios",
)

Side = Callable[[int], Awaitable[list[float]]]

#: Users in Redis and in the hot L1 set (10,000 str keys, as in PEERS.md).
N_USERS = 10_000
USER_HASH = "cal:users"
#: Production defaults except a users TTL longer than any run, so no entry expires
#: mid-scenario (a finite TTL either way: the hit path reads the clock alike).
BENCH_CONFIG = CacheConfig().with_budget("users", max_bytes=20 << 20, ttl=3600.0)
#: L1 hits timed per sample (block mean).
L1_BLOCK = 1000
#: Blocks per side of the L1 rows (quick, full), ours and the baseline alternating
#: block by block; the gated ratio is of the fastest block of each side.
L1_ROUNDS = (2000, 10000)
#: Gate of an L1 hit of a cache with a meter provider against one without (``--metrics``).
METRICS_GATE = 1.15


@dataclass(frozen=True)
class Row:
    """One line of the report: side ``ours`` against side ``base`` of a scenario."""

    key: str
    label: str
    ours: str
    base: str
    base_label: str
    gate: float  # fail when the ratio of ``stat`` (ours / base) exceeds it
    gate_py: float | None = None  # the gate when L1 is the pure-Python fallback
    goal: float | None = None  # the target ratio, when it states one
    seed: tuple[float, float] | None = None  # SPEC's seed figure (s), lo..hi
    seed_text: str = ""
    #: The statistic compared: "p50" (medians) or "min" (the fastest block of each
    #: side: for CPU-bound rows, whose blocks only get slower under load).
    stat: Literal["p50", "min"] = "p50"


@dataclass
class Scenario:
    """Sides measured together (interleaved) and the rows reported from them."""

    name: str
    sides: dict[str, Side]
    rows: list[Row]
    rounds: tuple[int, int]  # (quick, full)
    per_round: int
    warmup: int = 1
    prepare: Callable[[], Awaitable[None]] | None = field(default=None)
    #: Samples per round of particular sides (default ``per_round``): slow third sides.
    side_n: dict[str, int] = field(default_factory=dict)
    #: Particular sides that run in one round out of ``k`` only: slow third sides.
    side_every: dict[str, int] = field(default_factory=dict)


class Metering:
    """A meter provider recording ``cache``'s metrics during the blocks of the sides
    wrapped by :meth:`side` only (an SDK ``MeterProvider`` with a reader that collects
    on demand, as a Prometheus scrape does)."""

    def __init__(self, cache: CallableCache) -> None:
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        except ImportError:
            raise SystemExit("bench --metrics needs the OpenTelemetry SDK: "
                             "pip install 'cal-redis[prometheus]'") from None
        from .. import _otel

        self.cache = cache
        self.reader = InMemoryMetricReader()
        self.binding = _otel.binding(MeterProvider(metric_readers=[self.reader]))
        #: The users L1's hit count when the provider last stopped recording.
        self.hits_recorded = 0

    def side(self, side: Side) -> Side:
        """``side``, run with the provider recording the cache."""
        sources = self.cache._metrics

        async def metered(n: int) -> list[float]:
            self.binding.add(sources)
            assert self.cache.remote.observer is not None
            try:
                return await side(n)
            finally:
                self.binding.remove(sources)
                self.hits_recorded = self.cache.local["users"].hits

        return metered

    def collected_hits(self) -> float | None:
        """The users L1 hits the provider collects (None: no such metric)."""
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "cal_redis.l1.hits":
                        return float(sum(getattr(p, "value", 0) for p in m.data.data_points
                                         if dict(p.attributes or {}).get(
                                             "cal_redis.namespace") == "users"))
        return None


def make_user(i: int) -> User:
    """User ``i``: a ~300 B JSON document with 10 fields."""
    return User(
        id=f"u{i:06d}",
        account_id=f"acc-{i % 97:04d}-emea-production",
        email=f"firstname.lastname.{i:06d}@customer-{i % 97:04d}.callable.example",
        username=f"firstname.lastname.{i:06d}",
        name=f"Firstname Middlename Lastname {i:06d}",
        extension=f"{100000 + i}",
        role="contact-centre-agent",
        enabled=True,
        created_at=1_764_000_000_000 + i,
        updated_at=1_764_000_500_000 + i,
    )


async def seed_users(cache: CallableCache, n: int = N_USERS) -> list[str]:
    """Write ``n`` users straight into ``cal:users`` (pipelined HSET); return their ids."""
    client = cache.redis_connection()
    ids = []
    for start in range(0, n, 1000):
        mapping: dict[Any, bytes] = {}  # redis-py types the fields as a union
        for i in range(start, min(n, start + 1000)):
            user = make_user(i)
            mapping[user.id] = codec.encode(user)
            ids.append(user.id)
        await client.hset(USER_HASH, mapping=mapping)
    return ids


def stock_client(url: str, **kwargs: Any) -> RawRedis:
    """A stock redis.asyncio client to ``url`` (the bench cache's server), speaking the
    same RESP version as the cache: the hand-written baseline."""
    return raw_client(url, protocol=BENCH_CONFIG.protocol, **kwargs)


def _cycle(ids: list[str]) -> Callable[[], str]:
    state = [0]
    n = len(ids)

    def nxt() -> str:
        i = state[0]
        state[0] = (i + 1) % n
        return ids[i]

    return nxt


def cache_scenarios(
    cache: CallableCache, ids: list[str], stock: RawRedis,
    metering: Metering | None = None,
) -> list[Scenario]:
    """The cache-level scenarios over ``ids`` (already in Redis); ``stock``: the baseline
    client. ``metering``: the L1-hit scenarios then time the same hits of the same cache
    with a meter provider recording its metrics (side ``metrics``: bound to the provider
    for its blocks only) beside those without (side ``ours``), block by block."""
    client = cache.redis_connection()
    l1 = cache.local["users"]
    dec = msgspec.json.Decoder(User).decode
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    users = {u: dec(codec.encode(make_user(int(u[1:])))) for u in ids}
    plain = dict(users)
    blocks = [shuffled[i : i + L1_BLOCK] for i in range(0, len(shuffled), L1_BLOCK)]
    nxt_block = _cycle([str(i) for i in range(len(blocks))])

    async def fill_l1() -> None:
        l1.invalidate_all()
        for u in ids:
            await cache.get_user_by_id(u)
        assert len(l1) == len(ids), "L1 budget too small for the hot set"

    # -- L1 hit, sync: lru.get vs dict.get ----------------------------------------------
    def block_sync(get: Callable[[str], object]) -> Side:
        async def side(n: int) -> list[float]:
            out = []
            for _ in range(n):
                keys = blocks[int(nxt_block())]
                t0 = perf_counter()
                for k in keys:
                    get(k)
                out.append((perf_counter() - t0) / len(keys))
            return out

        return side

    # -- L1 hit through the async API ---------------------------------------------------
    async def bare(k: str) -> User | None:
        return plain.get(k)

    def block_async(get: Callable[[str], Awaitable[User | None]]) -> Side:
        async def side(n: int) -> list[float]:
            out = []
            for _ in range(n):
                keys = blocks[int(nxt_block())]
                t0 = perf_counter()
                for k in keys:
                    await get(k)
                out.append((perf_counter() - t0) / len(keys))
            return out

        return side

    # -- one read through L2 ------------------------------------------------------------
    nxt = _cycle(shuffled)

    async def ours_l2(n: int) -> list[float]:
        out = []
        get, inv = cache.get_user_by_id, l1.invalidate
        for _ in range(n):
            k = nxt()
            inv(k)  # not timed
            t0 = perf_counter()
            await get(k)
            out.append(perf_counter() - t0)
        return out

    def hget_side(redis_client: RawRedis) -> Side:
        async def side(n: int) -> list[float]:
            out = []
            hget = redis_client.hget
            for _ in range(n):
                k = nxt()
                t0 = perf_counter()
                raw = await hget(USER_HASH, k)
                dec(raw)  # type: ignore[arg-type]
                out.append(perf_counter() - t0)
            return out

        return side

    raw_l2, stock_l2 = hget_side(client), hget_side(stock)

    cold = _cycle(shuffled)

    async def ours_cold(n: int) -> list[float]:
        # L1 flushed once per call of this side (not timed); each key is read once.
        assert n <= len(ids)
        l1.invalidate_all()
        out = []
        get = cache.get_user_by_id
        for _ in range(n):
            k = cold()
            t0 = perf_counter()
            await get(k)
            out.append(perf_counter() - t0)
        return out

    # -- batches ------------------------------------------------------------------------
    def batch_sides(size: int) -> dict[str, Side]:
        windows = [shuffled[i : i + size] for i in range(0, len(shuffled) - size + 1, size)]
        nxt_w = _cycle([str(i) for i in range(len(windows))])

        async def ours(n: int) -> list[float]:
            out = []
            for _ in range(n):
                w = windows[int(nxt_w())]
                l1.invalidate_all()  # not timed
                t0 = perf_counter()
                await cache.get_users_batch(w)
                out.append(perf_counter() - t0)
            return out

        def hmget_side(redis_client: RawRedis) -> Side:
            async def side(n: int) -> list[float]:
                out = []
                for _ in range(n):
                    w = windows[int(nxt_w())]
                    t0 = perf_counter()
                    raws = await redis_client.hmget(USER_HASH, w)
                    [dec(r) for r in raws]  # type: ignore[arg-type]
                    out.append(perf_counter() - t0)
                return out

            return side

        async def seq(n: int) -> list[float]:
            out = []
            get = cache.get_user_by_id
            for _ in range(n):
                w = windows[int(nxt_w())]
                l1.invalidate_all()  # not timed
                t0 = perf_counter()
                for k in w:
                    await get(k)
                out.append(perf_counter() - t0)
            return out

        return {"ours": ours, "stock": hmget_side(stock), "raw": hmget_side(client), "seq": seq}

    def batch_rows(size: int, gate: float, layer_gate: float, seq_gate: float,
                   gate_py: float, layer_gate_py: float) -> list[Row]:
        return [
            Row(f"batch{size}", f"get_users_batch({size}), all L2", "ours", "stock",
                f"redis-py HMGET of {size} + msgspec decode per item", gate, goal=1.05,
                gate_py=gate_py, stat="min"),
            Row(f"batch{size}_layer", "  same, layers only", "ours", "raw",
                "that HMGET + decode on cal-redis's own (hiredis-packed) client", layer_gate,
                gate_py=layer_gate_py, stat="min"),
            Row(f"batch{size}_vs_seq", f"  same vs {size} x get_user_by_id (L2)", "ours", "seq",
                f"{size} sequential get_user_by_id, all L2", seq_gate, stat="min"),
        ]

    l2_seed = (1e-3, 5e-3)
    miss_seed = (2e-3, 10e-3)
    l1_seed = (1e-6, 1e-6)
    sync_sides: dict[str, Side] = {"ours": block_sync(l1.get), "dict": block_sync(plain.get)}
    sync_rows = [Row("l1_sync", "L1 hit: lru.get(k)", "ours", "dict",
                     "dict.get on the same 10,000 str keys", 1.75, gate_py=8.25,
                     seed=l1_seed, seed_text="~0.001 ms", stat="min")]
    async_sides: dict[str, Side] = {"ours": block_async(cache.get_user_by_id),
                                    "bare": block_async(bare)}
    async_rows = [Row("l1_async", "L1 hit: await get_user_by_id", "ours", "bare",
                      "await f(k) where f returns dict.get(k)", 1.75, goal=2.5, gate_py=3.65,
                      seed=l1_seed, seed_text="~0.001 ms", stat="min")]
    if metering is not None:
        # The same rows with the meter provider recording (same gates), and against
        # the same hits without it: what a meter provider costs an L1 hit.
        sync_sides["metrics"] = metering.side(block_sync(l1.get))
        sync_rows += [
            Row("l1_sync_metrics", "  same, meter provider installed", "metrics", "dict",
                "dict.get on the same 10,000 str keys", 1.75, gate_py=8.25, stat="min"),
            Row("l1_sync_metrics_ratio", "  meter provider / none", "metrics", "ours",
                "the same lru.get(k) without a meter provider", METRICS_GATE, stat="min"),
        ]
        async_sides["metrics"] = metering.side(block_async(cache.get_user_by_id))
        async_rows += [
            Row("l1_async_metrics", "  same, meter provider installed", "metrics", "bare",
                "await f(k) where f returns dict.get(k)", 1.75, gate_py=3.65, stat="min"),
            Row("l1_async_metrics_ratio", "  meter provider / none", "metrics", "ours",
                "the same get_user_by_id without a meter provider", METRICS_GATE,
                stat="min"),
        ]
    return [
        Scenario("L1 hit, sync LRU", sync_sides, sync_rows,
                 rounds=L1_ROUNDS, per_round=1, warmup=20, prepare=fill_l1),
        Scenario("L1 hit, async API", async_sides, async_rows,
                 rounds=L1_ROUNDS, per_round=1, warmup=20, prepare=fill_l1),
        Scenario(
            "L1 miss, L2 hit",
            {"ours": ours_l2, "stock": stock_l2, "raw": raw_l2},
            [Row("l2_hit", "L1 miss, L2 hit: get_user_by_id", "ours", "stock",
                 "redis-py HGET + msgspec typed decode", 1.35, goal=1.05,
                 seed=l2_seed, seed_text="1-5 ms"),
             Row("l2_layer", "  same, layers only", "ours", "raw",
                 "that HGET + decode on cal-redis's own (hiredis-packed) client", 1.4)],
            rounds=(50, 300), per_round=50, warmup=1,
        ),
        Scenario(
            "cache miss + fetch + fill",
            {"ours": ours_cold, "stock": stock_l2},
            [Row("miss_fill", "miss + fetch + fill (cold key)", "ours", "stock",
                 "redis-py HGET + msgspec typed decode", 1.3,
                 seed=miss_seed, seed_text="2-10 ms")],
            rounds=(50, 300), per_round=50, warmup=1,
        ),
        Scenario(
            "get_users_batch(100)", batch_sides(100), batch_rows(100, 1.2, 1.55, 0.2, 1.65, 2.15),
            rounds=(480, 2400), per_round=1, side_every={"seq": 8},
        ),
        Scenario(
            "get_users_batch(1000)", batch_sides(1000), batch_rows(1000, 1.05, 1.6, 0.2, 1.75, 2.7),
            rounds=(120, 600), per_round=1, side_every={"seq": 10},
        ),
    ]


def ops_scenarios(cache: CallableCache, stock: RawRedis) -> list[Scenario]:
    """Direct-Redis operations beside the same commands sent by hand on ``stock``."""
    client = stock
    keys = KeyBuilder(cluster=BENCH_CONFIG.cluster_keys)
    acc, queue = "acc-bench", "support"
    qkey = keys.queue(acc, queue)
    items = _cycle([f"call-{i:05d}" for i in range(1000)])

    async def ours_queue(n: int) -> list[float]:
        out = []
        add, pop = cache.queue_add, cache.queue_pop
        for _ in range(n):
            item = items()
            t0 = perf_counter()
            await add(acc, queue, item)
            await pop(acc, queue)
            out.append(perf_counter() - t0)
        return out

    async def raw_queue(n: int) -> list[float]:
        # Same commands: MULTI ZADD NX + ZSCORE (the add returns the stored score), ZPOPMIN.
        out = []
        for _ in range(n):
            item = items()
            t0 = perf_counter()
            async with client.pipeline(transaction=True) as pipe:
                pipe.zadd(qkey, {item: float(now_ms())}, nx=True)
                pipe.zscore(qkey, item)
                await pipe.execute()
            await client.zpopmin(qkey)
            out.append(perf_counter() - t0)
        return out

    states = [AgentState.AVAILABLE, AgentState.BUSY]
    agents = [
        AgentStatus(user_id=f"u{i:06d}", account_id=acc, name=f"Agent {i}", status=st,
                    registered=True, connected=i % 3 != 0, updated_at=1_764_000_000_000 + i)
        for i in range(200) for st in states
    ]
    nxt_agent = _cycle([str(i) for i in range(len(agents))])
    encode = msgspec.json.Encoder().encode

    async def ours_agent(n: int) -> list[float]:
        out = []
        put = cache.set_agent_status
        for _ in range(n):
            status = agents[int(nxt_agent())]
            t0 = perf_counter()
            await put(acc, status)
            out.append(perf_counter() - t0)
        return out

    async def raw_agent(n: int) -> list[float]:
        # Same writes in one MULTI/EXEC: SET status JSON, SADD/SREM x3, HSET by_user.
        out = []
        reg, avail, conn = (keys.agents_registered(acc), keys.agents_available(acc),
                            keys.agents_connected(acc))
        by_user = keys.agents_by_user(acc)
        for _ in range(n):
            st = agents[int(nxt_agent())]
            t0 = perf_counter()
            skey = keys.agent_status(acc, st.user_id)
            uid = st.user_id
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(skey, encode(st))
                pipe.sadd(reg, uid) if st.registered else pipe.srem(reg, uid)
                if st.status is AgentState.AVAILABLE:
                    pipe.sadd(avail, uid)
                else:
                    pipe.srem(avail, uid)
                pipe.sadd(conn, uid) if st.connected else pipe.srem(conn, uid)
                pipe.hset(by_user, uid, st.name)
                await pipe.execute()
            out.append(perf_counter() - t0)
        return out

    return [
        Scenario(
            "queue add + pop",
            {"ours": ours_queue, "raw": raw_queue},
            [Row("queue", "queue_add + queue_pop", "ours", "raw",
                 "MULTI(ZADD NX, ZSCORE) + ZPOPMIN, redis-py by hand", 1.35)],
            rounds=(30, 160), per_round=25,
        ),
        Scenario(
            "agent status set",
            {"ours": ours_agent, "raw": raw_agent},
            [Row("agent_status", "set_agent_status", "ours", "raw",
                 "MULTI(SET, SADD/SREM x3, HSET), redis-py by hand", 0.9)],
            rounds=(30, 160), per_round=25,
        ),
    ]
