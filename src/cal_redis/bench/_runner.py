"""The runner of ``python -m cal_redis bench``: interleaved sides, statistics, the report.

Every scenario runs our operation and a baseline doing the same work with the raw
client (or a plain ``dict``), interleaved round by round, after a warm-up. Absolute
times drift between runs on shared machines; ratios measured in one run do not, so
only ratios are gated. See docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from .._server_info import describe_server
from ..cache import CallableCache
from ._concurrency import Check, concurrency_checks, measure_concurrency
from ._propagation import measure_propagation
from ._scenarios import (
    BENCH_CONFIG,
    N_USERS,
    Metering,
    Scenario,
    Side,
    cache_scenarios,
    ops_scenarios,
    seed_users,
    stock_client,
)
from ._writers import WRITERS, WRITERS_ROW, Throughput, measure_writers

__all__ = (
    "PROPAGATION_ROWS",
    "PropagationRow",
    "Stat",
    "Progress",
    "Result",
    "Stats",
    "count_round_trips",
    "interleave",
    "run_bench",
)


Stat = Literal["p50", "min"]


@dataclass(frozen=True)
class Stats:
    """Median, p99 and minimum (seconds per operation) of ``n`` samples."""

    median: float
    p99: float
    min: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        s = sorted(samples)
        return cls(statistics.median(s), s[max(0, math.ceil(0.99 * len(s)) - 1)], s[0], len(s))

    def get(self, stat: Stat) -> float:
        """The statistic a row compares: ``"p50"`` (median) or ``"min"``."""
        return self.min if stat == "min" else self.median


@dataclass(frozen=True)
class Result:
    """One latency row of the report, measured."""

    key: str
    label: str
    baseline: str
    ours: Stats
    base: Stats
    #: The statistic compared: "p50" (medians) or "min" (min-of-blocks, CPU-bound rows).
    stat: Stat
    ratio: float  # ours.get(stat) / base.get(stat)
    gate: float
    goal: float | None
    seed: tuple[float, float] | None
    seed_text: str
    trips: int | None  # round trips to Redis per operation, ours (None: not counted)
    base_trips: int | None  # ... and the baseline's
    #: An exact check that failed (the measurement itself is wrong), else "".
    problem: str = ""
    #: False: the ratio gate is reported, not applied (a run on another event loop than
    #: the one the gates were derived on); round trips and exact checks still are.
    ratio_gated: bool = True

    @property
    def over_gate(self) -> bool:
        """The ratio exceeds its gate (or is not a number)."""
        return not self.ratio <= self.gate

    @property
    def passed(self) -> bool:
        """The ratio is within its gate, we make no more round trips than the baseline,
        and no exact check failed."""
        more_trips = (self.trips or 0) > (self.base_trips or 0)
        return not (self.over_gate and self.ratio_gated) and not more_trips and not self.problem


async def interleave(
    sides: dict[str, Side], rounds: int, per_round: int, warmup: int = 1,
    side_n: dict[str, int] | None = None, side_every: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Run every side ``per_round`` samples (``side_n[name]`` if given) per round, the
    order of the sides reversed every other round (A B, B A, ...), after ``warmup``
    untimed rounds. A side with ``side_every[name] = k`` runs in one round out of
    ``k`` only (in pairs of rounds, so in both orders): a slow side that would
    otherwise take most of the time."""
    names = list(sides)
    n = {name: (side_n or {}).get(name, per_round) for name in names}
    every = {name: (side_every or {}).get(name, 1) for name in names}
    for _ in range(warmup):
        for name in names:
            await sides[name](n[name])
    out: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            if every[name] == 1 or r % (2 * every[name]) < 2:
                out[name].extend(await sides[name](n[name]))
    return out


async def count_round_trips(side: Side, tries: int = 3) -> int:
    """Round trips to Redis of one operation of ``side``: the fewest over ``tries`` runs
    (so a stray heartbeat of the sync connection is not counted). A round trip is one
    write of a request buffer to a connection (a pipeline or MULTI/EXEC is one)."""
    from ..remote.baseline import counting_sends

    counts = []
    with counting_sends() as sent:
        for _ in range(tries):
            sent[0] = 0
            await side(1)
            counts.append(sent[0])
    return min(counts)


def _results(
    sc: Scenario, samples: dict[str, list[float]], trips: dict[str, int]
) -> list[Result]:
    from .._fast import EXTENSION_ACTIVE

    results = []
    for row in sc.rows:
        ours, base = Stats.of(samples[row.ours]), Stats.of(samples[row.base])
        gate = row.gate if EXTENSION_ACTIVE or row.gate_py is None else row.gate_py
        results.append(Result(row.key, row.label, row.base_label, ours, base, row.stat,
                              ours.get(row.stat) / base.get(row.stat), gate, row.goal,
                              row.seed, row.seed_text, trips[row.ours], trips[row.base]))
    return results


def _machine(server_version: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import msgspec

    from .. import __version__
    from .._fast import EXTENSION_ACTIVE
    from ..remote.baseline import client_versions

    loop = type(asyncio.get_running_loop())
    loop_name = "asyncio"
    if loop.__module__.split(".", 1)[0] == "uvloop":
        import uvloop

        loop_name = f"uvloop {getattr(uvloop, '__version__', '?')}"
    return {
        "cal_redis": __version__,
        "loop": loop_name,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        **client_versions(),
        "msgspec": msgspec.__version__,
        "redis_server": server_version,
        "l1": "cython" if EXTENSION_ACTIVE else "python",
    }


Progress = Callable[[str], None]


async def run_cluster(url: str, *, quick: bool, progress: Progress) -> list[Result]:
    """The cluster rows (:mod:`._cluster`) against the Redis Cluster at ``url``."""
    from ._cluster import cluster_propagation, cluster_scenarios, stock_cluster

    cache = await CallableCache.connect(url, config=replace(BENCH_CONFIG, metrics=False))
    stock = stock_cluster(url)
    results: list[Result] = []
    try:
        await stock.flushdb(target_nodes=stock.PRIMARIES)
        for sc in await cluster_scenarios(cache, stock):
            progress(sc.name)
            samples = await interleave(sc.sides, sc.rounds[0 if quick else 1], sc.per_round,
                                       sc.warmup)
            trips = {name: await count_round_trips(side) for name, side in sc.sides.items()}
            results.extend(_results(sc, samples, trips))
        await cache.close()
        progress("cluster: event propagation")
        prop = await cluster_propagation(url, stock, 300 if quick else 1500)
    finally:
        await cache.close()
        await stock.aclose()
    # Reported, not gated: on Redis 7.0 both sides are bimodal (messages that wait
    # ~40 ms on the cluster bus, docs/deployment.md), so no ratio of theirs is stable.
    ours, base = Stats.of(prop["ours"]), Stats.of(prop["raw"])
    slow = {k: sum(x > 0.01 for x in v) for k, v in prop.items()}
    results.append(Result(
        "cl_propagation", "cluster: propagation: set_user -> peer's L1",
        f"raw PUBLISH on the users' master -> a raw subscriber on another node, 200 B "
        f"(samples over 10 ms: ours {slow['ours']}, raw {slow['raw']} of {ours.n} each)",
        ours, base, "p50", ours.median / base.median, 3.0, None, None, "", None, None,
        ratio_gated=False))
    return results


async def run_bench(
    url: str, *, quick: bool, progress: Progress, metrics: bool = False,
    cluster_url: str | None = None,
) -> dict[str, Any]:
    """Run every scenario against the Redis at ``url``; return the report as a dict.

    ``cluster_url``: also the cluster rows against that Redis Cluster (:func:`run_cluster`).

    ``metrics``: the L1-hit rows are also measured with an OpenTelemetry SDK meter
    provider recording the cache's metrics (the ``prometheus`` extra), beside the same
    hits without one (see :class:`~._scenarios.Metering`)."""
    t_start = time.perf_counter()
    cache = await CallableCache.connect(url, config=replace(BENCH_CONFIG, metrics=False))
    stock = None
    metering = None
    try:
        await cache.redis_connection().flushdb()
        ids = await seed_users(cache, N_USERS)
        stock = stock_client(url)
        if metrics:
            metering = Metering(cache)
        scenarios = cache_scenarios(cache, ids, stock, metering) + ops_scenarios(cache, stock)
        total = len(scenarios) + 3  # + event propagation, concurrent writers, concurrency
        results: list[Result] = []
        for i, sc in enumerate(scenarios, 1):
            progress(f"[{i}/{total}] {sc.name}")
            if sc.prepare is not None:
                await sc.prepare()
            samples = await interleave(sc.sides, sc.rounds[0 if quick else 1], sc.per_round,
                                       sc.warmup, sc.side_n, sc.side_every)
            trips = {name: await count_round_trips(side) for name, side in sc.sides.items()}
            results.extend(_results(sc, samples, trips))
        if metering is not None:
            results = _check_metered(results, metering)
        info = await cache.redis_connection().info("server")
        machine = _machine(describe_server(info))
    finally:
        if stock is not None:
            await stock.aclose()
        # Closed before the next stages: its subscriber would handle their events.
        await cache.close()
    progress(f"[{total - 1}/{total}] event propagation")
    events, warmup = (600, 100) if quick else (3000, 200)
    prop = await measure_propagation(url, events=events, warmup=warmup, writer_subscribed=False)
    results.extend(_propagation_results(prop))
    progress(f"[{total - 1}/{total}] {WRITERS_ROW.label}")
    # Windows of 2.5 s in quick runs too: a write that fails does so after a long run of
    # conflicts, which 1 s windows end too early to show (docs/benchmarks.md).
    window, rounds = 2.5, 2 if quick else 4
    writers = await measure_writers(url, writers=WRITERS, window=window, rounds=rounds)
    throughput = [_writers_result(writers)]
    progress(f"[{total}/{total}] concurrency: get_user_by_id from C coroutines")
    window, rounds, conc_warmup, pair = (0.4, 2, 0.1, 1.0) if quick else (1.0, 4, 0.25, 4.0)
    conc = await measure_concurrency(url, window=window, rounds=rounds, warmup=conc_warmup,
                                     pair=pair, progress=progress)
    checks = concurrency_checks(conc)
    if cluster_url is not None:
        progress("cluster rows")
        results.extend(await run_cluster(cluster_url, quick=quick, progress=progress))
    # The ratio gates were derived on asyncio's loop (docs/benchmarks.md): on another
    # loop they are reported, not applied; errors, round trips and exact checks are.
    gated = machine["loop"] == "asyncio"
    if not gated:
        results = [replace(r, ratio_gated=False) for r in results]
        throughput = [replace(t, ratio_gated=False) for t in throughput]
        checks = [replace(c, ratio_gated=False) for c in checks]
    return {
        "mode": "quick" if quick else "full",
        "machine": machine,
        "duration_s": round(time.perf_counter() - t_start, 1),
        "results": [_as_json(r) for r in results],
        "throughput": [_as_json(t) for t in throughput],
        "propagation": prop,
        "writers": writers,
        "concurrency": conc,
        "concurrency_checks": [_as_json(c) for c in checks],
        "ratio_gates_applied": gated,
        "passed": (all(r.passed for r in results) and all(t.passed for t in throughput)
                   and all(c.passed for c in checks)),
    }


def _check_metered(results: list[Result], metering: Metering) -> list[Result]:
    """The metered rows' exact check: the provider collected the L1's own hit count."""
    got, want = metering.collected_hits(), metering.hits_recorded
    if got == want:
        return results
    problem = f"the meter provider collected {got} L1 hits of users, the L1 counted {want}"
    return [replace(r, problem=problem) if "metrics" in r.key else r for r in results]


@dataclass(frozen=True)
class PropagationRow:
    """A row from a series of :func:`measure_propagation`, against its series "raw"."""

    key: str
    series: str
    label: str
    gate: float  # on the ratio of p50s
    goal: float | None = None
    seed: tuple[float, float] | None = None
    seed_text: str = ""


PROPAGATION_ROWS: tuple[PropagationRow, ...] = (
    PropagationRow("propagation_exec", "exec:quiet", "propagation: EXEC -> peer's L1", 1.95),
    PropagationRow("propagation_write", "write:quiet", "propagation: set_user -> peer's L1",
                   2.40, goal=2.0, seed=(1e-3, 2e-3), seed_text="1-2 ms"),
)


def _propagation_results(prop: dict[str, Any]) -> list[Result]:
    def stats(name: str) -> Stats:
        s = prop["series"][name]
        return Stats(s["p50_us"] / 1e6, s["p99_us"] / 1e6, s["min_us"] / 1e6, int(s["n"]))

    base = stats("raw")
    label = f"redis-py PUBLISH -> PubSub receive, {prop['message_bytes']} B, paced"
    out = []
    for row in PROPAGATION_ROWS:
        ours = stats(row.series)
        writer = row.series.split(":", 1)[1]
        problems = []
        if prop["not_in_l1"][writer]:
            problems.append(f"{prop['not_in_l1'][writer]} samples after which the peer's L1 "
                            "did not hold the value written")
        if row.series.startswith("exec:") and prop["no_request_stamp"][writer]:
            problems.append(f"{prop['no_request_stamp'][writer]} writes sent no pipeline "
                            "execute or command to stamp (see _stamp_requests)")
        out.append(Result(row.key, row.label, label, ours, base, "p50",
                          ours.median / base.median, row.gate, row.goal, row.seed,
                          row.seed_text, None, None, "; ".join(problems)))
    return out


def _writers_result(w: dict[str, Any]) -> Throughput:
    row = WRITERS_ROW
    problems = []
    if w["failures"]["raw"]:
        problems.append(f"{w['failures']['raw']} raw writes failed: {w['errors']['raw']}")
    return Throughput(
        key=row.key, label=row.label, baseline=row.base_label,
        ours_per_s=w["writes_per_s"]["ours"], base_per_s=w["writes_per_s"]["raw"],
        ratio=w["ratio"], goal=row.goal, min_ratio=row.min_ratio,
        writes=w["writes"]["ours"], base_writes=w["writes"]["raw"],
        failures=w["failures"]["ours"], errors=w["errors"]["ours"],
        window_s=w["window_s"], rounds=w["rounds"], problem="; ".join(problems),
    )


def _as_json(r: Result | Throughput | Check) -> dict[str, Any]:
    d = asdict(r)
    d["passed"] = r.passed
    d["over_gate"] = r.over_gate
    if isinstance(r, Check):
        d["met_goal"] = r.met_goal
    return d
