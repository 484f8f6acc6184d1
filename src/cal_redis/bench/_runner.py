"""``python -m cal_redis bench``: our latencies beside the raw client, same run, same data.

Every scenario runs our operation and a baseline doing the same work with the raw
client (or a plain ``dict``), interleaved round by round, after a warm-up. The table
gives our median and p99, the baseline's median, the ratio of medians (ours /
baseline), the issue's goal and SPEC's seed figure where one applies, and the CI gate
on the ratio. Absolute times drift between runs on shared machines; ratios measured in
one run do not, so only ratios are gated. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._bench_propagation import measure_propagation
from ._bench_scenarios import (
    BENCH_CONFIG,
    N_USERS,
    Scenario,
    Side,
    cache_scenarios,
    ops_scenarios,
    seed_users,
    stock_client,
)
from .cache import CallableCache

__all__ = (
    "Stats",
    "Result",
    "interleave",
    "measure_propagation",
    "run_bench",
    "format_table",
    "add_arguments",
    "main",
)


@dataclass(frozen=True)
class Stats:
    """Median and p99 (seconds per operation) of ``n`` samples."""

    median: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        s = sorted(samples)
        return cls(statistics.median(s), s[max(0, math.ceil(0.99 * len(s)) - 1)], len(s))


@dataclass(frozen=True)
class Result:
    """One row of the report, measured."""

    key: str
    label: str
    baseline: str
    ours: Stats
    base: Stats
    ratio: float
    gate: float
    goal: float | None
    seed: tuple[float, float] | None
    seed_text: str
    trips: int | None  # round trips to Redis per operation, ours (None: not counted)
    base_trips: int | None  # ... and the baseline's

    @property
    def passed(self) -> bool:
        """The ratio is within its gate and we make no more round trips than the baseline."""
        more_trips = (self.trips or 0) > (self.base_trips or 0)
        return self.ratio <= self.gate and not more_trips


async def interleave(
    sides: dict[str, Side], rounds: int, per_round: int, warmup: int = 1,
    side_n: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Run every side ``per_round`` samples (``side_n[name]`` if given) per round, the
    order of the sides reversed every other round (A B, B A, ...), after ``warmup``
    untimed rounds."""
    names = list(sides)
    n = {name: (side_n or {}).get(name, per_round) for name in names}
    for _ in range(warmup):
        for name in names:
            await sides[name](n[name])
    out: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].extend(await sides[name](n[name]))
    return out


async def count_round_trips(side: Side, tries: int = 3) -> int:
    """Round trips to Redis of one operation of ``side``: the fewest over ``tries`` runs
    (so a stray heartbeat of the sync connection is not counted). A round trip is one
    write of a request buffer to a connection (a pipeline or MULTI/EXEC is one)."""
    from redis.asyncio.connection import AbstractConnection

    orig = AbstractConnection.send_packed_command
    sent = [0]

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1
        await orig(self, *args, **kwargs)

    counts = []
    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        for _ in range(tries):
            sent[0] = 0
            await side(1)
            counts.append(sent[0])
    finally:
        AbstractConnection.send_packed_command = orig  # type: ignore[method-assign]
    return min(counts)


def _results(
    sc: Scenario, samples: dict[str, list[float]], trips: dict[str, int]
) -> list[Result]:
    from ._fast import EXTENSION_ACTIVE

    results = []
    for row in sc.rows:
        ours, base = Stats.of(samples[row.ours]), Stats.of(samples[row.base])
        gate = row.gate if EXTENSION_ACTIVE or row.gate_py is None else row.gate_py
        results.append(Result(row.key, row.label, row.base_label, ours, base,
                              ours.median / base.median, gate, row.goal, row.seed,
                              row.seed_text, trips[row.ours], trips[row.base]))
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
    import redis

    from . import __version__
    from ._fast import EXTENSION_ACTIVE
    from .remote import hiredis_available

    return {
        "cal_redis": __version__,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "hiredis": str(hiredis_available()),
        "msgspec": msgspec.__version__,
        "redis_server": server_version,
        "l1": "cython" if EXTENSION_ACTIVE else "python",
    }


Progress = Callable[[str], None]


async def run_bench(url: str, *, quick: bool, progress: Progress) -> dict[str, Any]:
    """Run every scenario against the Redis at ``url``; return the report as a dict."""
    t_start = time.perf_counter()
    cache = await CallableCache.connect(url, config=BENCH_CONFIG)
    stock = None
    try:
        await cache.remote.client.flushdb()
        ids = await seed_users(cache, N_USERS)
        stock = stock_client(cache)
        scenarios = cache_scenarios(cache, ids, stock) + ops_scenarios(cache, stock)
        total = len(scenarios) + 1  # + event propagation
        results: list[Result] = []
        for i, sc in enumerate(scenarios, 1):
            progress(f"[{i}/{total}] {sc.name}")
            if sc.prepare is not None:
                await sc.prepare()
            samples = await interleave(sc.sides, sc.rounds[0 if quick else 1], sc.per_round,
                                       sc.warmup, sc.side_n)
            trips = {name: await count_round_trips(side) for name, side in sc.sides.items()}
            results.extend(_results(sc, samples, trips))
        machine = _machine(await cache.remote.server_version())
    finally:
        if stock is not None:
            await stock.aclose()
        await cache.close()  # before propagation: its subscriber would see those events
    progress(f"[{total}/{total}] event propagation")
    events, warmup = (300, 50) if quick else (2000, 200)
    prop = await measure_propagation(url, events=events, warmup=warmup, writer_subscribed=False)
    results.extend(_propagation_results(prop))
    return {
        "mode": "quick" if quick else "full",
        "machine": machine,
        "duration_s": round(time.perf_counter() - t_start, 1),
        "results": [_as_json(r) for r in results],
        "propagation": prop,
        "passed": all(r.passed for r in results),
    }


#: (key, series, label, gate, seed, seed text) of the propagation rows; the baseline
#: is the series "raw" of :func:`measure_propagation`.
PROPAGATION_ROWS: tuple[tuple[str, str, str, float, tuple[float, float] | None, str], ...] = (
    ("propagation_exec", "exec:quiet", "propagation: EXEC -> peer's L1", 1.65, None, ""),
    ("propagation_write", "write:quiet", "propagation: set_user -> peer's L1", 3.75,
     (1e-3, 2e-3), "1-2 ms"),
)


def _propagation_results(prop: dict[str, Any]) -> list[Result]:
    def stats(name: str) -> Stats:
        s = prop["series"][name]
        return Stats(s["p50_us"] / 1e6, s["p99_us"] / 1e6, int(s["n"]))

    base = stats("raw")
    label = f"redis-py PUBLISH -> PubSub receive, {prop['message_bytes']} B, paced"
    out = []
    for key, series, text, gate, seed, seed_text in PROPAGATION_ROWS:
        ours = stats(series)
        out.append(Result(key, text, label, ours, base, ours.median / base.median, gate, None,
                          seed, seed_text, None, None))
    return out


def _as_json(r: Result) -> dict[str, Any]:
    d = asdict(r)
    d["passed"] = r.passed
    return d


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit (ns, µs, ms)."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table (baselines listed below it)."""
    head = ("scenario", "median", "p99", "baseline", "ratio", "goal", "seed", "gate", "trips", "")
    rows = [head]
    notes = []
    for i, r in enumerate(report["results"], 1):
        rows.append((
            r["label"], fmt_time(r["ours"]["median"]), fmt_time(r["ours"]["p99"]),
            f"{fmt_time(r['base']['median'])} [{i}]", f"{r['ratio']:.2f}x",
            f"<={r['goal']:.2f}x" if r["goal"] else "", r["seed_text"],
            f"<={r['gate']:.2f}x",
            "-" if r["trips"] is None else f"{r['trips']}/{r['base_trips']}",
            "PASS" if r["passed"] else "FAIL",
        ))
        notes.append(f"[{i}] {r['baseline']}")
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *rest]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    m = report["machine"]
    lines += ["", "baselines (measured in the same run, interleaved with ours):", *notes, "",
              f"{report['mode']} run, {report['duration_s']} s; {m['nproc']} CPU ({m['cpu']}), "
              f"Python {m['python']}, redis-server {m['redis_server']}, redis-py {m['redis_py']} "
              f"(hiredis {m['hiredis']}), msgspec {m['msgspec']}, L1 {m['l1']}",
              "ratio = median(ours) / median(baseline); a row fails when the ratio exceeds its",
              "gate or when trips (round trips to Redis per operation, ours/baseline) shows",
              "more round trips for ours than for the baseline.",
              "RESULT: " + ("PASS" if report["passed"] else "FAIL")]
    for r in report["results"]:
        if r["ratio"] > r["gate"]:
            lines.append(f"  FAIL {r['label'].strip()}: ratio {r['ratio']:.2f}x > gate "
                         f"{r['gate']:.2f}x")
        if (r["trips"] or 0) > (r["base_trips"] or 0):
            lines.append(f"  FAIL {r['label'].strip()}: {r['trips']} round trips per call, "
                         f"the baseline needs {r['base_trips']}")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str) -> None:
    """Bar chart (log scale): our median, the baseline's, and the seed figure per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in report["results"] if not r["key"].endswith("_vs_seq")]
    labels = [r["label"] for r in res]
    y = list(range(len(res)))
    h = 0.38
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(res) + 1.6))
    ax.barh([v - h / 2 for v in y], [r["ours"]["median"] * 1e6 for r in res], h,
            label="cal-redis (median)", color="#1f77b4")
    ax.barh([v + h / 2 for v in y], [r["base"]["median"] * 1e6 for r in res], h,
            label="baseline, same run (median)", color="#aaaaaa")
    seeded = [(v, r["seed"]) for v, r in zip(y, res, strict=True) if r["seed"]]
    for n, (v, (lo, hi)) in enumerate(seeded):
        ax.plot([lo * 1e6, hi * 1e6], [v, v], color="#d62728", lw=2)
        ax.plot([hi * 1e6], [v], marker="|", ms=14, color="#d62728",
                label="seed target (SPEC)" if n == 0 else None)
    for v, r in zip(y, res, strict=True):
        ax.annotate(f" {r['ratio']:.2f}x", (r["ours"]["median"] * 1e6, v - h / 2),
                    va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("latency per operation (µs, log scale)")
    m = report["machine"]
    ax.set_title(f"cal-redis bench ({report['mode']}): {m['nproc']} CPU {m['cpu']}, "
                 f"Python {m['python']}, redis {m['redis_server']}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    p.add_argument("--url", help="benchmark this Redis; its database is FLUSHDB'd first, so "
                   "never point it at shared data (default: start an embedded one)")
    p.add_argument("--quick", action="store_true", help="short run for CI (about 20 s)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--chart", metavar="FILE", help="also write a PNG chart (needs matplotlib)")


def _progress(msg: str) -> None:
    print(f"bench: {msg} ...", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark as the CLI asks; 0 when every gate holds, else 1."""
    server = None
    url: str | None = args.url
    if not url:
        from .embedded import EmbeddedRedis

        _progress("starting a private redis-server")
        server = EmbeddedRedis().start()
        url = server.url
    try:
        report = asyncio.run(run_bench(url, quick=args.quick, progress=_progress))
    finally:
        if server is not None:
            server.stop()
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.chart:
        write_chart(report, args.chart)
    return 0 if report["passed"] else 1
