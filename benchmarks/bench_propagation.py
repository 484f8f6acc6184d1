"""Event propagation: ``set_user`` on instance A → the new value in instance B's L1.

Measured beside the raw client doing the same transport work in the same run:
redis-py asyncio ``PUBLISH`` of a message of the same size → received by a redis-py
``PubSub`` subscriber. Samples are paced (one every ``--interval`` s) and interleaved
(ours, raw, ours, raw...), both sides in one process and one event loop, with the
garbage collector paused during the run.

The series are described in ``cal_redis.bench._propagation``.

Run: ``python benchmarks/bench_propagation.py [--events 2000] [--protocol 3]``.
Import: ``await measure_propagation(events=2000)`` (from ``cal_redis.bench``) returns the
figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

# The measuring function lives in the package so that `python -m cal_redis bench`
# can run it from an installed wheel; this script is its standalone front end.
from cal_redis.bench import measure_propagation

__all__ = ("measure_propagation", "main")


LABELS = {
    "raw": "raw redis-py PUBLISH → PubSub receive",
    "exec:quiet": "ours: EXEC (with PUBLISH) → B's L1",
    "write:quiet": "ours: set_user → B's L1",
    "exec:subscribed": "ours: EXEC → B's L1, writer subscribed",
    "write:subscribed": "ours: set_user → B's L1, writer subscribed",
}


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"event propagation, {r['events']} events per series, paced {r['interval_s'] * 1e3:g} ms,"
        f" RESP{r['protocol']}, raw message {r['message_bytes']} B",
        f"{'series':52} {'p50':>9} {'p99':>9} {'max':>9} {'p50 xraw':>9} {'p99 xraw':>9}",
    ]
    for key in ("raw", "exec:quiet", "write:quiet", "exec:subscribed", "write:subscribed"):
        s = r["series"].get(key)
        if s is None:
            continue
        ratio = r["ratios"].get(key, {"p50": 1.0, "p99": 1.0})
        lines.append(
            f"{LABELS[key]:52} {s['p50_us']:7.0f}µs {s['p99_us']:7.0f}µs {s['max_us']:7.0f}µs "
            f"{ratio['p50']:8.2f}x {ratio['p99']:8.2f}x"
        )
    exec_p99 = r["ratios"]["exec:quiet"]["p99"]
    write_p50 = r["ratios"]["write:quiet"]["p50"]
    lines.append(f"goal: EXEC → B's L1 p99 ≤ 1.3 x raw p99: {exec_p99:.2f}x "
                 f"({'met' if exec_p99 <= 1.3 else 'NOT met'})")
    lines.append(f"goal: set_user → B's L1 p50 ≤ 2.0 x raw p50: {write_p50:.2f}x "
                 f"({'met' if write_p50 <= 2.0 else 'NOT met'})")
    missing = {k: v for k, v in r["not_in_l1"].items() if v}
    if missing:
        lines.append(f"WRONG: samples after which B's L1 did not hold the value: {missing}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="samples per series")
    parser.add_argument("--interval", type=float, default=0.001, help="pacing (s)")
    parser.add_argument("--protocol", type=int, choices=(2, 3), default=3)
    parser.add_argument("--url", help="use this Redis instead of an embedded one")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = asyncio.run(measure_propagation(
        args.url, events=args.events, interval=args.interval, protocol=args.protocol
    ))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
