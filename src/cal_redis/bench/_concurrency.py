"""Throughput under concurrency: C coroutines calling ``get_user_by_id`` on random ids.

For each C in :data:`CONCURRENCY`, these sides run in windows of a fixed length,
interleaved (A B C D, D C B A, ...), after an untimed warm-up window each:

* ``ours_0``: C coroutines on one :class:`~cal_redis.CallableCache` with the production
  defaults (a pool of 64 that makes callers past it wait, coalesced reads) but the L1
  off (``CacheConfig(local_cache=False)``): every read goes to Redis (0 % L1 hits).
* ``ours_99``: the same on a cache with the L1 on (the default config): every
  :data:`MISS_EVERY`-th read is of an id not in L1, the others of a hot set of
  :data:`HOT` ids that L1 holds (99 % hits). L1 is reset and the hot set loaded
  (untimed) before each window, so a miss is always a miss.
* ``nc_0`` (C in :data:`NO_COALESCE_AT` only): as ``ours_0`` with
  ``coalesce_reads=False``, so coalescing on and off are measured in the same run.
* ``raw``: C coroutines on a stock ``redis.asyncio`` client with a
  ``BlockingConnectionPool`` of C connections (callers wait for a connection, as ours
  do), each doing ``HGET cal:users <id>`` + a msgspec typed decode. It has no cache,
  so it is the baseline of both hit ratios.

At C = 1 the lone caller's cost with coalescing on and off is also compared in
alternating blocks of :data:`PAIR_BLOCK` calls (``lone_pair``): the few per cent that
matter there are below the drift between windows.

Ids are drawn at random from :data:`N_CONC_USERS` users. Every pool has its
connections open before the first window (C for the raw client, the 64 of each
cache). A coroutine loops until the window ends, timing each call; the window's length
is from its start until the last call in flight finished. Per window: calls per
second, p50 and p99 of the call latency, calls that raised (warm-up included), and the
Redis commands the server executed (``INFO commandstats`` before and after, all
commands). Per side: calls per second over all its windows and the median of its
windows' p50 and p99; the windows' own figures give the spread.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import re
import statistics
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec

from ..cache import CallableCache
from ..models import User
from ..remote.baseline import RawRedis, raw_pooled_client
from ._scenarios import BENCH_CONFIG, USER_HASH, seed_users, stock_client

__all__ = (
    "CONCURRENCY",
    "CONCURRENCY_CHECKS",
    "HOT",
    "MISS_EVERY",
    "NO_COALESCE_AT",
    "N_CONC_USERS",
    "PAIR_BLOCK",
    "Check",
    "CheckSpec",
    "concurrency_checks",
    "measure_concurrency",
)

#: Concurrent callers per side.
CONCURRENCY: tuple[int, ...] = (1, 10, 100, 1000)
#: The C at which ours also runs with ``coalesce_reads=False``.
NO_COALESCE_AT: tuple[int, ...] = (1, 100)
#: C at which each window is split into this many shorter ones (same time per side):
#: a lone call's cost moves with the machine's load, and more, shorter alternations
#: keep the sides' figures at C=1 comparable (the lone-caller check itself uses
#: alternating blocks, see :func:`_lone_pair`).
SPLIT: dict[int, int] = {1: 4}
#: Users in Redis for this stage (ids ``u000000`` ...).
N_CONC_USERS = 100_000
#: The hot set of the 99 %-hits side (fits the default 20 MB users budget of L1).
HOT = 10_000
#: 99 % hits: one read in this many is of an id not in L1.
MISS_EVERY = 100

#: The sides, in the order of the first round: (name, label).
SIDES: dict[str, str] = {
    "ours_0": "ours, L1 off (0 % hits)",
    "nc_0": "ours, L1 off, coalesce_reads=False",
    "ours_99": "ours, L1 on (99 % hits)",
    "raw": "redis-py HGET + decode, blocking pool of C",
}

Op = Callable[[str], Awaitable[object]]


async def _open(pool: Any, n: int) -> None:
    """Open ``n`` connections of ``pool`` (untimed), so no window pays for connecting."""
    conns = await asyncio.gather(*(pool.get_connection() for _ in range(n)))
    for conn in conns:
        await pool.release(conn)


@dataclass
class _Window:
    calls: int
    errors: list[str]
    elapsed: float
    p50: float
    p99: float
    commands: int


async def _commands(admin: RawRedis) -> int:
    """Commands the server has executed so far (INFO commandstats, all commands)."""
    stats: dict[str, Any] = await admin.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def _window(op: Op, nxt: Callable[[], str], c: int, seconds: float,
                  admin: RawRedis | None) -> _Window:
    """``c`` coroutines calling ``op(nxt())`` until ``seconds`` have passed."""
    lat = array("d")
    errors: list[str] = []
    before = await _commands(admin) if admin is not None else 0
    gc.collect()
    start = time.perf_counter()
    deadline = start + seconds

    async def caller() -> None:
        pc, add = time.perf_counter, lat.append
        t0 = pc()
        while t0 < deadline:
            k = nxt()
            try:
                await op(k)
            except Exception as err:
                # One entry per kind of error, whatever id it names.
                errors.append(re.sub(r"'[^']*'", "'…'", f"{type(err).__name__}: {err}"))
                t0 = pc()
                continue
            t1 = pc()
            add(t1 - t0)
            t0 = t1

    await asyncio.gather(*(caller() for _ in range(c)))
    elapsed = time.perf_counter() - start
    # The INFO call itself is one command; not counted.
    commands = (await _commands(admin) - before - 1) if admin is not None else 0
    s = sorted(lat)
    n = len(s)
    p50 = s[n // 2] if n else float("nan")
    p99 = s[max(0, -(-99 * n // 100) - 1)] if n else float("nan")
    return _Window(n + len(errors), errors, elapsed, p50, p99, commands)


def _cursor(seq: Sequence[str]) -> Callable[[], str]:
    state = [0]
    n = len(seq)

    def nxt() -> str:
        i = state[0]
        state[0] = i + 1 if i + 1 < n else 0
        return seq[i]

    return nxt


#: The lone-caller comparison (coalescing on against off): calls per block, and the
#: segments its spread is given over.
PAIR_BLOCK = 25
PAIR_SEGMENTS = 8


async def _lone_pair(ops: dict[str, Op], nxt: Callable[[], str], seconds: float,
                     block: int = PAIR_BLOCK, segments: int = PAIR_SEGMENTS) -> dict[str, Any]:
    """One caller alternating blocks of ``block`` calls of each op (A B, B A, ...) for
    ``seconds``: both sides see the same moment of the machine, which windows of a
    tenth of a second apart do not (a lone call's cost moves with the load by more than
    the few per cent compared here)."""
    names = list(ops)
    blocks: dict[str, list[list[float]]] = {n: [] for n in names}
    errors: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in names}
    pc = time.perf_counter
    gc.collect()
    deadline = pc() + seconds
    r = 0
    while pc() < deadline:
        for name in names if r % 2 == 0 else reversed(names):
            op, xs = ops[name], []
            for _ in range(block):
                k = nxt()
                t0 = pc()
                try:
                    await op(k)
                except Exception as err:
                    errors[name][re.sub(r"'[^']*'", "'…'", f"{type(err).__name__}: {err}")] += 1
                    continue
                xs.append(pc() - t0)
            blocks[name].append(xs)
        r += 1

    def median(bs: Sequence[list[float]]) -> float:
        xs = [x for b in bs for x in b]
        return statistics.median(xs) if xs else float("nan")

    a, b = names
    step = max(1, r // segments)
    per_segment = [median(blocks[a][i : i + step]) / median(blocks[b][i : i + step])
                   for i in range(0, r - step + 1, step)]
    return {
        "block": block, "blocks": r,
        "p50_s": {n: median(blocks[n]) for n in names},
        "calls": {n: sum(len(x) for x in blocks[n]) for n in names},
        "errors": {n: sum(errors[n].values()) for n in names},
        "error_kinds": {n: dict(errors[n].most_common(5)) for n in names},
        "ratio_p50": median(blocks[a]) / median(blocks[b]),
        "per_segment": per_segment,
    }


async def measure_concurrency(
    url: str, *, concurrency: Sequence[int] = CONCURRENCY,
    no_coalesce_at: Sequence[int] = NO_COALESCE_AT, users: int = N_CONC_USERS,
    hot: int = HOT, window: float = 1.0, rounds: int = 2, warmup: float = 0.2,
    pair: float = 1.0, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sides of the module docstring at every C; return the figures per C and
    side: calls/s over all windows, the median of the windows' p50 and p99, and each
    window's figures (the spread)."""
    rng = random.Random(11)
    l1_off = replace(BENCH_CONFIG, local_cache=False)
    caches = {
        "ours_0": await CallableCache.connect(url, config=l1_off),
        "nc_0": await CallableCache.connect(url, config=replace(l1_off, coalesce_reads=False)),
        "ours_99": await CallableCache.connect(url, config=BENCH_CONFIG),
    }
    admin = stock_client(url)
    out: dict[str, Any] = {
        "users": users, "hot": hot, "miss_every": MISS_EVERY, "window_s": window,
        "rounds": rounds, "warmup_s": warmup, "sides": dict(SIDES), "by_c": {},
        "windows": {},
    }
    try:
        for cache in caches.values():
            await _open(cache.redis_connection().connection_pool, BENCH_CONFIG.max_connections)
        ids = await seed_users(caches["ours_0"], users)
        shuffled = ids[:]
        rng.shuffle(shuffled)
        hot_ids, cold_ids = shuffled[:hot], shuffled[hot:]
        uniform = [rng.choice(ids) for _ in range(1 << 18)]
        hot_seq = [rng.choice(hot_ids) for _ in range(1 << 18)]
        l1 = caches["ours_99"].local["users"]
        dec = msgspec.json.Decoder(User).decode

        async def reset_l1() -> None:
            # Untimed: L1 holds the hot set and nothing else.
            l1.invalidate_all()
            for i in range(0, len(hot_ids), 1000):
                await caches["ours_99"].get_users_batch(hot_ids[i : i + 1000])

        def mixed() -> Callable[[], str]:
            hot_next, cold_next, n = _cursor(hot_seq), _cursor(cold_ids), [0]

            def nxt() -> str:
                n[0] += 1
                return cold_next() if n[0] % MISS_EVERY == 0 else hot_next()

            return nxt

        uniform_next = _cursor(uniform)
        for c in concurrency:
            pool, raw_client = raw_pooled_client(url, max_connections=c, timeout=20,
                                                 protocol=BENCH_CONFIG.protocol)
            try:
                await _open(pool, c)
                hget = raw_client.hget

                async def raw_op(k: str, hget: Any = hget) -> User:
                    return dec(await hget(USER_HASH, k))

                ops: dict[str, Op] = {
                    "ours_0": caches["ours_0"].get_user_by_id,
                    "ours_99": caches["ours_99"].get_user_by_id,
                    "raw": raw_op,
                }
                if c in no_coalesce_at:
                    ops["nc_0"] = caches["nc_0"].get_user_by_id
                names = [s for s in SIDES if s in ops]
                if progress is not None:
                    progress(f"concurrency C = {c}: {', '.join(names)}")
                windows: dict[str, list[_Window]] = {s: [] for s in names}
                errors: dict[str, collections.Counter[str]] = {
                    s: collections.Counter() for s in names}
                hits = misses = 0
                joins = dict.fromkeys(names, 0)
                for name in names:  # warm-up, untimed; its errors count all the same
                    if name == "ours_99":
                        await reset_l1()
                    nxt = mixed() if name == "ours_99" else uniform_next
                    w = await _window(ops[name], nxt, c, warmup, None)
                    errors[name].update(w.errors)
                k = SPLIT.get(c, 1)
                n_rounds, length = rounds * k, window / k
                for r in range(n_rounds):
                    for name in names if r % 2 == 0 else reversed(names):
                        nxt = uniform_next
                        if name == "ours_99":
                            await reset_l1()
                            nxt = mixed()
                            s0 = l1.stats()
                        j0 = caches[name].stats()["single_flight_joins"] if name in caches else 0
                        w = await _window(ops[name], nxt, c, length, admin)
                        if name in caches:
                            joins[name] += caches[name].stats()["single_flight_joins"] - j0
                        if name == "ours_99":
                            s1 = l1.stats()
                            hits += s1["hits"] - s0["hits"]
                            misses += s1["misses"] - s0["misses"]
                        windows[name].append(w)
                        errors[name].update(w.errors)
                out["by_c"][str(c)] = {
                    name: _side_figures(windows[name], errors[name]) for name in names}
                out["windows"][str(c)] = {"rounds": n_rounds, "window_s": length}
                for name in names:
                    # Calls that waited for another caller's read of the same id.
                    out["by_c"][str(c)][name]["single_flight_joins"] = joins[name]
                out["by_c"][str(c)]["ours_99"]["l1_hit_ratio"] = (
                    hits / (hits + misses) if hits + misses else float("nan"))
                if c == 1 and "nc_0" in ops and pair > 0:
                    if progress is not None:
                        progress("concurrency C = 1: ours_0 and nc_0 in alternating blocks")
                    out["lone_pair"] = await _lone_pair(
                        {"ours_0": ops["ours_0"], "nc_0": ops["nc_0"]}, uniform_next, pair)
            finally:
                await raw_client.aclose()
    finally:
        await admin.aclose()
        for cache in caches.values():
            await cache.close()
    return out


def _side_figures(ws: list[_Window], errors: collections.Counter[str]) -> dict[str, Any]:
    calls = sum(w.calls for w in ws)
    elapsed = sum(w.elapsed for w in ws)
    commands = sum(w.commands for w in ws)
    return {
        "calls": calls,
        "calls_per_s": calls / elapsed if elapsed else 0.0,
        # The median over the windows of each window's percentile.
        "p50_s": statistics.median(w.p50 for w in ws) if ws else float("nan"),
        "p99_s": statistics.median(w.p99 for w in ws) if ws else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "commands_per_s": commands / elapsed if elapsed else 0.0,
        "calls_per_command": calls / commands if commands else float("nan"),
        "windows": [
            {"calls_per_s": w.calls / w.elapsed, "p50_s": w.p50, "p99_s": w.p99,
             "errors": len(w.errors), "commands": w.commands, "elapsed_s": w.elapsed}
            for w in ws
        ],
    }


# -- checks ---------------------------------------------------------------------------------

Metric = Literal["tput", "p99", "p50", "pair_p50", "errors"]


@dataclass(frozen=True)
class CheckSpec:
    """A gated figure of the concurrency stage.

    ``metric``: ``"tput"`` = calls/s of ``side`` / calls/s of ``base`` (higher is
    better: fails below ``gate``); ``"p99"`` / ``"p50"`` = that latency of ``side`` /
    ``base`` (lower is better: fails above ``gate``); ``"pair_p50"`` = the same p50
    ratio from the lone caller's alternating blocks (``lone_pair``); ``"errors"`` =
    calls of ours that raised, at every C (fails above ``gate``, 0).
    """

    key: str
    label: str
    metric: Metric
    c: int | None
    side: str
    base: str
    goal: float | None  # the goal, where it names one
    gate: float | None  # None: reported, not gated


@dataclass(frozen=True)
class Check:
    """A :class:`CheckSpec`, measured."""

    key: str
    label: str
    metric: Metric
    value: float
    goal: float | None
    gate: float | None
    #: Per round: the figure of the windows of that round (the spread), tput/latency rows.
    rounds: list[float]
    problem: str = ""
    #: False: a ratio gate is reported, not applied (see ``Result.ratio_gated``); the
    #: errors check always is.
    ratio_gated: bool = True

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "tput"

    @property
    def met_goal(self) -> bool | None:
        """Whether the figure meets the issue's goal (None: no goal named). A p99 goal is
        "below the baseline's": strictly under it."""
        if self.goal is None:
            return None
        if self.higher_is_better:
            return self.value >= self.goal
        if self.metric == "p99":
            return self.value < self.goal
        return self.value <= self.goal

    @property
    def over_gate(self) -> bool:
        """The figure is past its gate (where it has one)."""
        if self.gate is None:
            return False
        if self.higher_is_better:
            return not self.value >= self.gate
        return not self.value <= self.gate

    @property
    def passed(self) -> bool:
        if self.problem:
            return False
        if self.metric == "errors":
            return not self.over_gate
        return not (self.over_gate and self.ratio_gated)


#: What is reported and gated. Gates from 20 quick runs with a CPU hog on one core and
#: 3 full runs (docs/benchmarks.md): lower-is-better, the largest ratio seen x 1.2
#: rounded up to 0.05; higher-is-better, the smallest / 1.2 rounded down to 0.05. Goals
#: are the issue's, where it names one. The throughput gates sit below those goals: at
#: C=1000 the ratio went down to 4.25x on the loaded machine (goal 5x).
CONCURRENCY_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("conc_errors", "calls of ours that raised, any C, any side", "errors",
              None, "ours", "", goal=0, gate=0),
    CheckSpec("conc_c1_lone", "C=1, L1 off: p50 coalescing on / off", "pair_p50", 1,
              "ours_0", "nc_0", goal=1.05, gate=1.25),
    CheckSpec("conc_c1_tput", "C=1, L1 off: ours / raw calls/s", "tput", 1, "ours_0", "raw",
              goal=None, gate=0.8),
    CheckSpec("conc_c10_tput", "C=10, L1 off: ours / raw calls/s", "tput", 10, "ours_0",
              "raw", goal=None, gate=1.85),
    CheckSpec("conc_c100_tput", "C=100, L1 off: ours / raw calls/s", "tput", 100, "ours_0",
              "raw", goal=5.0, gate=4.2),
    CheckSpec("conc_c100_p99", "C=100, L1 off: ours / raw p99", "p99", 100, "ours_0", "raw",
              goal=1.0, gate=0.4),
    CheckSpec("conc_c1000_tput", "C=1000, L1 off: ours / raw calls/s", "tput", 1000,
              "ours_0", "raw", goal=5.0, gate=3.5),
    CheckSpec("conc_c1000_p99", "C=1000, L1 off: ours / raw p99", "p99", 1000, "ours_0",
              "raw", goal=1.0, gate=0.7),
    CheckSpec("conc_c100_nc_tput", "C=100, L1 off: coalescing on / off calls/s", "tput", 100,
              "ours_0", "nc_0", goal=None, gate=4.1),
)


def _round_figures(side: dict[str, Any], metric: Metric) -> list[float]:
    key = {"tput": "calls_per_s", "p99": "p99_s", "p50": "p50_s"}[metric]
    return [float(w[key]) for w in side["windows"]]


def concurrency_checks(conc: dict[str, Any],
                       specs: Sequence[CheckSpec] = CONCURRENCY_CHECKS) -> list[Check]:
    """The checks of a :func:`measure_concurrency` result (skipping a C it did not run)."""
    out = []
    for spec in specs:
        if spec.metric == "errors":
            n = sum(int(f["errors"]) for sides in conc["by_c"].values()
                    for name, f in sides.items() if name != "raw")
            n += sum(conc.get("lone_pair", {}).get("errors", {}).values())
            out.append(Check(spec.key, spec.label, "errors", float(n), spec.goal, spec.gate, []))
            continue
        if spec.metric == "pair_p50":
            lone = conc.get("lone_pair")
            if lone is not None:
                out.append(Check(spec.key, spec.label, "pair_p50", float(lone["ratio_p50"]),
                                 spec.goal, spec.gate, list(lone["per_segment"])))
            continue
        sides = conc["by_c"].get(str(spec.c))
        if sides is None or spec.side not in sides or spec.base not in sides:
            continue
        a, b = sides[spec.side], sides[spec.base]
        key = {"tput": "calls_per_s", "p99": "p99_s", "p50": "p50_s"}[spec.metric]
        value = float(a[key]) / float(b[key])
        per_round = [x / y for x, y in zip(_round_figures(a, spec.metric),
                                           _round_figures(b, spec.metric), strict=False)]
        problem = ""
        if b["errors"]:
            problem = f"{b['errors']} calls of the baseline raised: {b['error_kinds']}"
        out.append(Check(spec.key, spec.label, spec.metric, value, spec.goal, spec.gate,
                         per_round, problem))
    return out
