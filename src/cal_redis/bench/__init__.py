"""``python -m cal_redis bench``: our latencies beside the raw client, same run, same data.

Every scenario runs our operation and a baseline doing the same work with the raw
client (or a plain ``dict``), interleaved round by round, after a warm-up. The table
gives our median and p99, the baseline's median, the ratio (ours / baseline), the
issue's goal and SPEC's seed figure where one applies, and the CI gate on the ratio.
Absolute times drift between runs on shared machines; ratios measured in one run do
not, so only ratios are gated. See docs/benchmarks.md.

This package is imported only by the ``bench`` subcommand (and the pytest-benchmark
suites in ``benchmarks/``): ``import cal_redis`` and the other subcommands never load it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ._concurrency import concurrency_checks, measure_concurrency
from ._propagation import measure_propagation
from ._report import format_table, write_chart
from ._runner import Result, Stats, interleave, run_bench

T = TypeVar("T")

__all__ = (
    "Result",
    "Stats",
    "add_arguments",
    "concurrency_checks",
    "format_table",
    "interleave",
    "main",
    "measure_concurrency",
    "measure_propagation",
    "run_bench",
    "write_chart",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    p.add_argument("--url", help="benchmark this Redis; its database is FLUSHDB'd first, so "
                   "never point it at shared data (default: start an embedded one)")
    p.add_argument("--quick", action="store_true", help="short run for CI (about 40 s)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the event loop to run on (uvloop: pip install 'cal-redis[uvloop]')")
    p.add_argument("--metrics", action="store_true",
                   help="also time the L1 hits of a cache whose metrics an OpenTelemetry "
                   "meter provider records, beside the same hits without one (needs the "
                   "prometheus extra)")
    p.add_argument("--cluster", action="store_true",
                   help="also the cluster rows (L2 hit, batch, set_user, propagation) beside "
                   "redis-py's RedisCluster, on an embedded 3+3 cluster (or --cluster-url)")
    p.add_argument("--cluster-url", metavar="URL",
                   help="the redis+cluster:// URL of the cluster rows; every master is "
                   "FLUSHDB'd first")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--chart", metavar="FILE", help="also write a PNG chart (needs matplotlib)")


def _progress(msg: str) -> None:
    print(f"bench: {msg} ...", file=sys.stderr, flush=True)


def _run(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``coro`` on a new event loop of kind ``loop`` ("asyncio" or "uvloop")."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            coro.close()
            raise SystemExit("bench --loop uvloop: uvloop is not installed "
                             "(pip install 'cal-redis[uvloop]')") from None
        result: T = uvloop.run(coro)
        return result
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cal_redis bench [options]``: run the benchmark; 0 when every gate
    holds, else 1. ``argv``: the options after ``bench`` (default: ``sys.argv[2:]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cal_redis bench",
        description="Latencies beside the raw client in the same run, gated on ratios "
        "(docs/benchmarks.md).",
    )
    add_arguments(parser)
    args = parser.parse_args(sys.argv[2:] if argv is None else argv)
    server = None
    url: str | None = args.url
    if not url:
        from ..embedded import EmbeddedRedis

        _progress("starting a private redis-server")
        server = EmbeddedRedis().start()
        url = server.url
    cluster = None
    cluster_url: str | None = args.cluster_url
    if args.cluster and not cluster_url:
        from ..embedded import EmbeddedCluster

        _progress("starting a private 3+3 Redis Cluster")
        cluster = EmbeddedCluster().start()
        cluster_url = cluster.url
    try:
        report = _run(run_bench(url, quick=args.quick, progress=_progress,
                                metrics=args.metrics, cluster_url=cluster_url), args.loop)
    finally:
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if args.chart:
        write_chart(report, args.chart)
    return 0 if report["passed"] else 1
