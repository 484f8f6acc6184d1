"""``python -m cal_redis``: demo, doctor, inspect, watch, migrate-keys (and bench).

The bench is described in docs/benchmarks.md.

``--version`` prints the version; ``doctor`` exits 0 when the installation and the
server it reaches are healthy, 1 when the server is unreachable or unsupported, and 2
when no server is configured (no ``--url``, no ``$CAL_VALKEY_HOST``) and ``--embedded``
was not asked for. ``inspect`` and ``watch`` are described in docs/observability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from . import __version__
from ._fast import EXTENSION_ACTIVE, L1_REASON
from ._fmt import fmt_time as _fmt
from ._server_info import supported_servers
from .cache import CallableCache
from .config import resolve_url
from .embedded import EmbeddedRedis, find_server_binary
from .errors import CalRedisError, ConfigurationError
from .models import Account, Device, Region, User, now_ms
from .remote import REDIS_PY_VERSION, hiredis_available, hiredis_packs_commands

__all__ = ("main",)


async def _median(op: Callable[[], Awaitable[object]], n: int, inner: int = 1) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            await op()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


async def _demo(cache: CallableCache, n_users: int) -> None:
    ts = now_ms()
    print(f"cal-redis {__version__} demo — L1: {cache.local.implementation}, "
          f"hiredis: {hiredis_available()}, Redis at {cache.remote.safe_url}")
    await cache.set_region(Region(id="eu-west", code="euw", name="Europe West", created_at=ts))
    await cache.set_account(
        Account(id="acc42", name="Acme Telecom", domain="acme.example", code="ACME",
                region_id="eu-west", created_at=ts)
    )
    for i in range(n_users):
        await cache.set_user(
            User(id=f"u{i}", account_id="acc42", email=f"agent{i}@acme.example",
                 username=f"agent{i}", name=f"Agent {i}", extension=str(1000 + i),
                 role="agent", created_at=ts)
        )
    await cache.set_device("acc42", Device(id="d1", user_id="u0", sip_username="agent0-desk",
                                           mac="00:11:22:33:44:55", created_at=ts))
    print(f"wrote 1 region, 1 account, {n_users} users, 1 device (each: entity + idents + "
          "event in one script)")

    users_l1 = cache.local["users"]
    users_l1.invalidate_all()
    t0 = time.perf_counter()
    user = await cache.get_user_by_id("u0")
    cold = time.perf_counter() - t0
    assert user is not None
    print(f"get_user_by_id('u0') cold (L1 miss → Redis → fill): {_fmt(cold)} -> {user.name}")

    hit = await _median(lambda: cache.get_user_by_id("u0"), 25, 2000)

    async def l2_read() -> object:
        users_l1.invalidate("u0")
        return await cache.get_user_by_id("u0")

    l2 = await _median(l2_read, 200)
    ids = [f"u{i}" for i in range(n_users)]

    async def batch() -> object:
        users_l1.invalidate_all()
        return await cache.get_users_batch(ids)

    b = await _median(batch, 30)
    if cache.config.sync:
        await _demo_sync(cache, f"u{n_users - 1}")
    last = n_users - 1
    by_ident = await cache.get_user_by_ident(f"agent{last}@acme.example")
    dev = await cache.get_device_by_ident("acc42", "00:11:22:33:44:55")
    print()
    print(f"{'operation':<44}{'median':>12}")
    print(f"{'L1 hit: await get_user_by_id':<44}{_fmt(hit):>12}")
    print(f"{'L1 miss, L2 hit: get_user_by_id':<44}{_fmt(l2):>12}")
    print(f"{f'get_users_batch({n_users}), all from Redis':<44}{_fmt(b):>12}")
    print(f"{'  per user':<44}{_fmt(b / n_users):>12}")
    print()
    print(f"by ident 'agent{last}@acme.example' -> {by_ident.id if by_ident else None}; "
          f"device by MAC -> {dev.id if dev else None}")
    st = cache.stats()
    u = st["l1"]["users"]
    print(f"L1 users: {u['entries']} entries, {u['weight']} / {u['max_weight']} bytes, "
          f"hits {u['hits']}, misses {u['misses']}; L2 round trips {st['l2']['round_trips']}")
    print("Full comparison against the raw client: `python -m cal_redis bench` "
          "(docs/benchmarks.md).")


async def _demo_sync(cache: CallableCache, uid: str) -> None:
    """A second instance on the same Redis sees a write of the first through its L1."""
    peer = await CallableCache.connect(cache.remote.url, config=cache.config)
    try:
        await peer.get_user_by_id(uid)  # now cached in the peer's L1
        t0 = time.perf_counter()
        await cache.update_user(uid, name="Renamed Agent")
        written = time.perf_counter()
        deadline = written + 2.0
        while time.perf_counter() < deadline:
            seen = peer.local["users"].peek(uid)
            if seen is not None and seen.name == "Renamed Agent":
                now = time.perf_counter()
                print(f"update_user on instance A ({_fmt(written - t0)}) -> instance B's L1 "
                      f"refreshed by pub/sub {_fmt(now - written)} after the write returned")
                break
            await asyncio.sleep(0)
        else:
            print("instance B did not see the update within 2 s (sync state: "
                  f"{peer.sync_state.state})")
    finally:
        await peer.close()


async def _run_demo(url: str | None, n_users: int) -> None:
    if url:
        async with await CallableCache.connect(url) as cache:
            await _demo(cache, n_users)
        return
    print(f"starting a private server: {find_server_binary()} ...")
    async with CallableCache.embedded() as cache:
        await _demo(cache, n_users)


async def _doctor(url: str | None, embedded: bool) -> int:
    """Print the installation's state; 0 when healthy, 1 when the server is unreachable
    or unsupported, 2 when no server is configured (and ``--embedded`` not given)."""
    print(f"cal-redis        {__version__}")
    print(f"python           {sys.version.split()[0]}")
    print(f"L1 extension     {'active (Cython)' if EXTENSION_ACTIVE else 'INACTIVE (pure Python)'}")
    print(f"L1 reason        {L1_REASON}")
    print(f"hiredis parser   {'yes' if hiredis_available() else 'NO (pip install hiredis)'}")
    packed = hiredis_packs_commands()
    print(f"command packing  {'hiredis' if packed else 'redis-py (Python; pip install hiredis)'}")
    print(f"redis-py         {REDIS_PY_VERSION}")
    server: EmbeddedRedis | None = None
    try:
        if embedded:
            server = EmbeddedRedis().start()
            url = server.url
            print(f"redis url        (--embedded) a private server: {find_server_binary()}")
        elif not url:
            try:
                url = resolve_url(None)
            except ConfigurationError as err:
                print(f"redis server     NOT CONFIGURED: {err}; or pass --url URL, or "
                      "--embedded to check against a private server started for the check")
                return 2
        async with await CallableCache.connect(url) as cache:
            version = await cache.remote.server_version()
            print(f"redis server     {version} at {cache.remote.safe_url} (supported: {supported_servers()})")
    except ConfigurationError as err:
        print(f"redis server     UNSUPPORTED: {err}")
        return 1
    except CalRedisError as err:
        print(f"redis server     UNREACHABLE: {err}")
        return 1
    finally:
        if server is not None:
            server.stop()
    return 0


_DESCRIPTION = (
    "cal-redis command line: a demo of the cache, a check of this installation and the "
    "server it reaches (doctor), and the benchmark beside the raw redis-py client (bench)."
)
_DOCTOR_HELP = (
    "Print the cal-redis and Python versions, which L1 is active and why, whether "
    "hiredis parses replies and packs commands, and the server reached: the one of "
    "--url, else of $CAL_VALKEY_HOST; with --embedded, a private server started for the "
    "check. Exit status: 0 healthy; 1 server unreachable or older than supported; 2 no "
    "server configured."
)


def _url(url: str | None) -> str:
    from .config import resolve_url

    return resolve_url(url)


async def _inspect(url: str | None, as_json: bool, sample: int, cluster: bool) -> int:
    from ._inspect import format_inspect, inspect

    report = await inspect(_url(url), cluster=cluster, sample=sample)
    print(json.dumps(report, indent=2) if as_json else format_inspect(report))
    return 0


async def _migrate_keys(url: str | None, dry_run: bool) -> int:
    from .config import CacheConfig
    from .layout import migrate_to_cluster
    from .remote import open_remote

    remote = await open_remote(_url(url), CacheConfig())
    try:
        report = await migrate_to_cluster(remote, dry_run=dry_run)
    finally:
        await remote.close()
    verb = "would move" if dry_run else "moved"
    print(f"{verb} {report.moved} keys to the cluster key style; {report.finished} finished "
          f"from an interrupted run; {report.already} already in the cluster style")
    for key in report.conflicts:
        print(f"conflict: {key} and its cluster name hold different values (left alone)")
    if not dry_run and not report.conflicts:
        print("recorded the cluster key style in cal:meta:layout")
    return 1 if report.conflicts else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cal_redis`` / ``cal-redis``."""
    parser = argparse.ArgumentParser(prog="python -m cal_redis", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"cal-redis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser(
        "demo", help="write platform data and read it through L1/L2",
        description="Write platform data and read it through L1 and L2, with timings; "
        "without --url on a private server started for the demo.",
    )
    p_demo.add_argument("--url", help="use this Redis instead of a private one")
    p_demo.add_argument("--users", type=int, default=100, help="users to write (default 100)")
    p_doc = sub.add_parser(
        "doctor", help="print versions, the active L1 and the server's status",
        description=_DOCTOR_HELP,
    )
    where = p_doc.add_mutually_exclusive_group()
    where.add_argument("--url", help="the Redis URL to check (default: $CAL_VALKEY_HOST)")
    where.add_argument("--embedded", action="store_true",
                       help="check against a private server started for the check")
    p_ins = sub.add_parser(
        "inspect", help="key families (keys, fields, memory), channel subscribers, server",
        description="Per key family of the layout: keys, hash fields or set members, and "
        "memory (MEMORY USAGE, sampled for big families); the event channels' subscribers; "
        "the server's version and role. One SCAN of cal:* (docs/observability.md).",
    )
    p_ins.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_ins.add_argument("--json", action="store_true", help="print the report as JSON")
    p_ins.add_argument("--sample", type=int, default=200, metavar="N",
                       help="MEMORY USAGE of at most N random keys per family, scaled up "
                       "(default 200)")
    p_ins.add_argument("--cluster", action="store_true",
                       help="the cluster key style (cal:account:{a}:...)")
    p_watch = sub.add_parser(
        "watch", help="live decoded tail of the event channels with per-type rates",
        description="Subscribe to cal:events and cal:account:*:events and print every valid "
        "event decoded (time received, type, id, account, origin, lag, data), per-type "
        "rates every --interval seconds and a summary at the end. Runs until Ctrl-C, "
        "--count events or --seconds.",
    )
    p_watch.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_watch.add_argument("--account", metavar="A",
                         help="only the events of account A (its channel's, and global "
                         "events naming it)")
    p_watch.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p_watch.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    p_watch.add_argument("--interval", type=float, default=5.0, metavar="S",
                         help="seconds between two lines of rates (default 5)")
    p_mig = sub.add_parser(
        "migrate-keys", help="move a standalone key layout to the cluster key style",
        description="Give every key of the standalone key style its cluster-style name "
        "(the ident hashes and every account key; DUMP/RESTORE keeping the TTL, then DEL "
        "of the old name), then record the cluster style in cal:meta:layout. Safe to run "
        "again after an interruption; stop every writer while it runs. Exit status 1 when "
        "a key and its new name hold different values (both are left alone). See "
        "docs/deployment.md.",
    )
    p_mig.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_mig.add_argument("--dry-run", action="store_true", help="count what would move, change nothing")
    # The bench's options belong to cal_redis.bench (`bench --help`), which is imported
    # only when the subcommand runs; everything after "bench" is handed to it.
    sub.add_parser(
        "bench", add_help=False,
        help="latencies beside the raw client, gated on ratios (docs/benchmarks.md)",
    )
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "demo":
            asyncio.run(_run_demo(args.url, max(1, args.users)))
            return 0
        if args.command == "doctor":
            return asyncio.run(_doctor(args.url, args.embedded))
        if args.command == "inspect":
            if args.sample < 1:
                parser.error("--sample must be >= 1")
            return asyncio.run(_inspect(args.url, args.json, args.sample, args.cluster))
        if args.command == "watch":
            if args.interval <= 0:
                parser.error("--interval must be > 0")
            from ._inspect import watch

            asyncio.run(watch(_url(args.url), account=args.account, count=args.count,
                              seconds=args.seconds, interval=args.interval))
            return 0
        if args.command == "migrate-keys":
            return asyncio.run(_migrate_keys(args.url, args.dry_run))
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(rest)
    except CalRedisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
