"""The operator tools, measured on a private redis-server (loopback), all in one run.

1. **Backup and restore** of 100,000 users (``cal:users`` and their idents, ~300 B
   JSON each) and 10,000 sessions (string keys with a TTL, in 100 accounts' active
   sets): seconds and MB of each, to a plain and a gzip file, restore into an empty
   server.
2. **A concurrent reader** during the backup, against the same reader without it,
   in the same run: a separate process (its own event loop and connection) doing
   paced ``HGET`` s of users (every ``--interval`` s) and recording each latency;
   p50/p99/max of the reader alone, during the backup, during the restore. The
   server's own view: the commands slower than 1 ms in ``SLOWLOG`` while it ran.
3. **Warming 100,000 users** against 100,000 ``get_user_by_id`` calls and against
   one ``get_users_batch`` per 1,000 ids, from a cold L1 each time, alternating,
   ``--rounds`` times (the fastest of each): ``warm(users=ids)`` and
   ``warm(["users"])`` (``HSCAN`` of the whole table).

Run: ``python benchmarks/bench_tools.py [--users 100000] [--sessions 10000] [--json]``.
It is a measuring script, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any

import redis

from cal_redis import CacheConfig, CallableCache, codec
from cal_redis.backup import backup, restore
from cal_redis.bench._scenarios import make_user
from cal_redis.embedded import EmbeddedRedis

MB = 1024 * 1024


def _reader(url: str, ids: list[str], interval: float, stop: Any, out: Any) -> None:
    """Paced HGETs until ``stop`` is set; sends (phase, latency s) samples to ``out``."""
    client = redis.Redis.from_url(url)
    phase = mp.current_process().name
    samples: list[tuple[str, float]] = []
    n = 0
    next_at = time.perf_counter()
    while not stop.is_set():
        label = out.recv() if out.poll() else None
        if label is not None:
            phase = label
        t0 = time.perf_counter()
        client.hget("cal:users", ids[n % len(ids)])
        samples.append((phase, time.perf_counter() - t0))
        n += 1
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.perf_counter()
    out.send(samples)
    client.close()


def _spin(seconds: float) -> None:
    """Burn one core for ``seconds`` (the control: a busy neighbour, no Redis traffic)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1


def _pcts(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": values[len(values) // 2] * 1e3,
        "p99_ms": values[int(len(values) * 0.99)] * 1e3,
        "max_ms": values[-1] * 1e3,
    }


async def _seed(cache: CallableCache, users: int, sessions: int) -> list[str]:
    raw = cache.redis_connection()
    ids: list[str] = []
    for start in range(0, users, 1000):
        pipe = raw.pipeline(transaction=False)
        table: dict[str, bytes] = {}
        idents: dict[str, str] = {}
        for i in range(start, min(users, start + 1000)):
            user = make_user(i)
            table[user.id] = codec.encode(user)
            for ident in (user.email, user.username, user.extension):
                idents[ident] = user.id
            ids.append(user.id)
        pipe.hset("cal:users", mapping=table)  # type: ignore[arg-type]
        pipe.hset("cal:user:idents", mapping=idents)  # type: ignore[arg-type]
        await pipe.execute()
    accounts = [f"acc-{i:04d}-emea-production" for i in range(100)]
    for start in range(0, sessions, 500):
        await asyncio.gather(*(
            cache.create_session(accounts[i % 100], ids[i % len(ids)], ttl=86400,
                                 data={"ua": "softphone/5.1", "ip": "192.0.2.10"})
            for i in range(start, min(sessions, start + 500))
        ))
    return ids


def _slowlog(client: redis.Redis) -> dict[str, Any]:
    entries = client.slowlog_get(1024)
    client.slowlog_reset()
    durations = sorted(e["duration"] for e in entries)
    commands: dict[str, int] = {}
    for e in entries:
        name = (e["command"].split(b" ")[0] if isinstance(e["command"], bytes) else
                str(e["command"]).split(" ")[0])
        key = name.decode() if isinstance(name, bytes) else name
        commands[key] = commands.get(key, 0) + 1
    return {"over_1ms": len(entries), "max_ms": durations[-1] / 1e3 if durations else 0.0,
            "commands": commands}


async def _tools(url: str, ids: list[str], args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sync = redis.Redis.from_url(url)
    sync.config_set("slowlog-log-slower-than", 1000)
    sync.slowlog_reset()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_reader, args=(url, ids, args.interval, stop, theirs),
                       name="alone")
    proc.start()
    cache = await CallableCache.connect(url, config=CacheConfig(sync=False, local_cache=False))
    try:
        await asyncio.sleep(args.quiet)  # the reader alone
        mine.send("cpu_busy")
        spinner = ctx.Process(target=_spin, args=(args.quiet,))
        spinner.start()
        await asyncio.to_thread(spinner.join)
        mine.send("backup")
        files = {}
        for name in ("cal.jsonl", "cal.jsonl.gz"):
            path = os.path.join(tmp, name)
            summary = await backup(cache.remote, path, page=args.page, depth=args.depth)
            size = await asyncio.to_thread(os.path.getsize, path)
            files[name] = {"seconds": summary.seconds, "keys": summary.keys,
                           "entries": summary.entries, "json_mb": summary.bytes / MB,
                           "file_mb": size / MB}
            if name == "cal.jsonl":
                out["slowlog_backup"] = _slowlog(sync)
                mine.send("between")
        out["backup"] = files
        mine.send("alone2")
        await asyncio.sleep(args.quiet)
        # Restore into an empty server: the users table goes away, the reader's HGETs
        # then miss (still a round trip each), until the restore puts it back.
        sync.flushall()
        sync.slowlog_reset()
        mine.send("restore")
        t0 = time.perf_counter()
        summary = await restore(cache.remote, os.path.join(tmp, "cal.jsonl"), depth=args.depth)
        out["restore"] = {"seconds": time.perf_counter() - t0,
                          "created": summary.total("created"), "errors": len(summary.errors)}
        out["slowlog_restore"] = _slowlog(sync)
        mine.send("alone3")
        await asyncio.sleep(args.quiet)
        t0 = time.perf_counter()
        summary = await restore(cache.remote, os.path.join(tmp, "cal.jsonl.gz"))
        out["restore_again_skip"] = {"seconds": time.perf_counter() - t0,
                                     "skipped": summary.total("skipped")}
    finally:
        stop.set()
        samples = mine.recv()
        proc.join(10)
        await cache.close()
        sync.close()
    by_phase: dict[str, list[float]] = {}
    for phase, latency in samples:
        by_phase.setdefault(phase, []).append(latency)
    alone = by_phase.get("alone", []) + by_phase.get("alone2", []) + by_phase.get("alone3", [])
    out["reader"] = {
        "interval_ms": args.interval * 1e3,
        "alone": _pcts(alone),
        "cpu_busy": _pcts(by_phase.get("cpu_busy", [])),
        "during_backup": _pcts(by_phase.get("backup", [])),
        "during_restore": _pcts(by_phase.get("restore", [])),
    }
    return out


async def _warming(url: str, ids: list[str], rounds: int) -> dict[str, Any]:
    config = CacheConfig(sync=False).with_budget("users", max_bytes=512 * MB, ttl=3600)
    cache = await CallableCache.connect(url, config=config)
    users = cache.local["users"]
    times: dict[str, list[float]] = {k: [] for k in ("warm_ids", "warm_scan", "get_by_id",
                                                     "batch_1000")}
    stored: dict[str, int] = {}

    async def warm_ids() -> None:
        stored["warm_ids"] = (await cache.warm((), users=ids)).stored

    async def warm_scan() -> None:
        stored["warm_scan"] = (await cache.warm(["users"])).stored

    async def by_id() -> None:
        for uid in ids:
            await cache.get_user_by_id(uid)

    async def batches() -> None:
        for start in range(0, len(ids), 1000):
            await cache.get_users_batch(ids[start : start + 1000])

    runs = {"warm_ids": warm_ids, "warm_scan": warm_scan, "get_by_id": by_id,
            "batch_1000": batches}
    try:
        for _ in range(rounds):
            for name, run in runs.items():
                users.invalidate_all()
                t0 = time.perf_counter()
                await run()
                times[name].append(time.perf_counter() - t0)
                assert len(users) == len(ids), (name, len(users))
    finally:
        await cache.close()
    best = {k: min(v) for k, v in times.items()}
    return {
        "users": len(ids), "rounds": rounds,
        "seconds_min": best,
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "ratio_to_warm_ids": {k: v / best["warm_ids"] for k, v in best.items()},
        "stored": stored,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        cache = await CallableCache.connect(server.url, config=CacheConfig(sync=False))
        try:
            t0 = time.perf_counter()
            ids = await _seed(cache, args.users, args.sessions)
            seeded = time.perf_counter() - t0
            used = int((await cache.remote.client.info("memory"))["used_memory"]) / MB
            version = await cache.remote.server_version()
        finally:
            await cache.close()
        result: dict[str, Any] = {
            "server": version, "users": args.users, "sessions": args.sessions,
            "page": args.page, "depth": args.depth,
            "seed_seconds": seeded, "server_used_mb": used,
        }
        result.update(await _tools(server.url, ids, args, tmp))
        result["warming"] = await _warming(server.url, ids, args.rounds)
        return result


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['server']}: {r['users']:,} users (+ idents) and {r['sessions']:,} sessions, "
             f"{r['server_used_mb']:.0f} MB in Redis; --page {r['page']} --depth {r['depth']}"]
    for name, f in r["backup"].items():
        lines.append(f"backup  -> {name:<13} {f['seconds']:6.2f} s  {f['keys']:>6} keys "
                     f"{f['entries']:>8,} entries  {f['file_mb']:6.1f} MB file "
                     f"({f['json_mb']:.1f} MB JSON)")
    rs = r["restore"]
    lines.append(f"restore <- cal.jsonl      {rs['seconds']:6.2f} s  {rs['created']} keys created"
                 f" into an empty server ({rs['errors']} errors)")
    again = r["restore_again_skip"]
    lines.append(f"restore <- cal.jsonl.gz   {again['seconds']:6.2f} s  again: "
                 f"{again['skipped']} keys skipped (idempotent)")
    rd = r["reader"]
    lines.append(f"concurrent reader (HGET every {rd['interval_ms']:g} ms, own process):")
    for phase in ("alone", "cpu_busy", "during_backup", "during_restore"):
        p = rd[phase]
        if p.get("n"):
            lines.append(f"  {phase:<15} n={p['n']:>6}  p50 {p['p50_ms']:6.3f} ms  "
                         f"p99 {p['p99_ms']:6.3f} ms  max {p['max_ms']:6.2f} ms")
    for name in ("slowlog_backup", "slowlog_restore"):
        s = r[name]
        lines.append(f"server: commands > 1 ms during {name.split('_')[1]}: {s['over_1ms']} "
                     f"(slowest {s['max_ms']:.2f} ms) {s['commands']}")
    w = r["warming"]
    lines.append(f"warming {w['users']:,} users from a cold L1 (fastest of {w['rounds']}):")
    labels = {"warm_ids": "warm(users=ids)", "warm_scan": "warm(['users']) (HSCAN)",
              "get_by_id": "get_user_by_id x N", "batch_1000": "get_users_batch per 1,000"}
    for key, label in labels.items():
        lines.append(f"  {label:<28} {w['seconds_min'][key]:7.3f} s  "
                     f"{w['ratio_to_warm_ids'][key]:6.2f} x warm(users=ids)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="warming rounds (default 3)")
    parser.add_argument("--interval", type=float, default=0.001,
                        help="the reader's pacing in s (default 0.001)")
    parser.add_argument("--quiet", type=float, default=2.0,
                        help="seconds of reader alone before and after (default 2)")
    parser.add_argument("--page", type=int, default=250, help="backup --page (default 250)")
    parser.add_argument("--depth", type=int, default=20,
                        help="backup/restore --depth (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
