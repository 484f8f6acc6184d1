"""``python -m cal_redis``: demo, doctor, inspect, watch, migrate-keys, the operator
tools (backup, restore, warm; docs/operations.md, "Operator tools") and bench
(docs/benchmarks.md).

``--version`` prints the version; ``doctor`` exits 0 when the installation and the
server it reaches are healthy, 1 when the server is unreachable or unsupported, and 2
when no server is configured (no ``--url``, no ``$CAL_VALKEY_HOST``) and ``--embedded``
was not asked for. ``inspect`` and ``watch`` are described in docs/observability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from . import __version__
from ._fast import EXTENSION_ACTIVE, L1_REASON
from ._fmt import fmt_time as _fmt
from ._progress import Bar
from ._server_info import supported_servers
from .cache import CallableCache
from .config import MB, WARMABLE, CacheConfig, resolve_url
from .embedded import EmbeddedRedis, find_server_binary
from .errors import CalRedisError, ConfigurationError
from .models import Account, Device, Region, User, now_ms
from .remote import (
    REDIS_PY_VERSION,
    Remote,
    SentinelRemote,
    hiredis_available,
    hiredis_packs_commands,
)

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
            remote = cache.remote
            if isinstance(remote, SentinelRemote):
                asked = ", ".join(f"{h}:{p}" for h, p in remote.parsed.sentinels)
                print(f"sentinel         service {remote.parsed.service}: primary "
                      f"{remote.primary_name} (asked the sentinels {asked})")
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
    "check. A redis+sentinel:// URL also prints the primary the sentinels named. Exit "
    "status: 0 healthy; 1 server unreachable or older than supported; 2 no server "
    "configured."
)


def _url(url: str | None) -> str:
    from .config import resolve_url

    return resolve_url(url)


async def _inspect(url: str | None, as_json: bool, sample: int, cluster: bool | None) -> int:
    from ._inspect import format_inspect, inspect

    report = await inspect(_url(url), cluster=cluster, sample=sample)
    print(json.dumps(report, indent=2) if as_json else format_inspect(report))
    return 0


async def _migrate_keys(url: str | None, dry_run: bool) -> int:
    from .layout import migrate_to_cluster

    async with _tool_remote(url) as remote:
        report = await migrate_to_cluster(remote, dry_run=dry_run)
    verb = "would move" if dry_run else "moved"
    print(f"{verb} {report.moved} keys to the cluster key style; {report.finished} finished "
          f"from an interrupted run; {report.already} already in the cluster style")
    for key in report.conflicts:
        print(f"conflict: {key} and its cluster name hold different values (left alone)")
    if not dry_run and not report.conflicts:
        print("recorded the cluster key style in cal:meta:layout")
    return 1 if report.conflicts else 0


def _read_ids(path: str | None) -> list[str] | None:
    """The ids of a file, one per line (blank lines ignored); None without a file."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


async def _warm(args: argparse.Namespace, users: list[str] | None) -> int:
    from ._progress import progress_bar

    names = [n for n in (args.namespaces or "").split(",") if n]
    if args.all_users and "users" not in names:
        names.append("users")
    config = CacheConfig(sync=False)  # this process only measures: no events to follow
    if args.budget_mb:
        for name in {*names, *(["users"] if users else []), *(["devices"] if args.devices else [])}:
            config = config.with_budget(name, max_bytes=int(args.budget_mb * MB),
                                        ttl=config.budget(name).ttl)
    bars: dict[str, Bar] = {}

    def progress(namespace: str, done: int, total: int | None) -> None:
        bar = bars.get(namespace)
        if bar is None:
            bar = bars[namespace] = progress_bar(f"warm {namespace}", total, "entry")
        bar.advance_to(done)

    async with await CallableCache.connect(args.url, config=config) as cache:
        result = await cache.warm(names, users=users, devices=args.devices or (),
                                  progress=progress, page=args.page)
        for bar in bars.values():
            bar.close()
        if args.json:
            import json

            print(json.dumps(result.as_dict(), indent=2))
            return 0
        print(f"warmed from {cache.remote.safe_url} into a {cache.local.implementation} L1")
        print(f"{'namespace':<12}{'read':>10}{'stored':>10}{'MB read':>10}{'seconds':>10}"
              f"{'entries/s':>12}  complete")
        for n in result.namespaces.values():
            rate = n.read / n.seconds if n.seconds else 0.0
            print(f"{n.namespace:<12}{n.read:>10}{n.stored:>10}{n.bytes / MB:>10.2f}"
                  f"{n.seconds:>10.3f}{rate:>12,.0f}  {'yes' if n.complete else 'no: budget full'}")
        print(f"{'total':<12}{result.read:>10}{result.stored:>10}{result.bytes / MB:>10.2f}"
              f"{result.seconds:>10.3f}")
    return 0


@contextlib.asynccontextmanager
async def _tool_remote(url: str | None) -> AsyncIterator[Remote]:
    """A connection for the operator tools: no cache, so nothing is written at connect
    (not even the key-style marker: a restore brings the backup's own)."""
    from .remote import open_remote

    remote = await open_remote(_url(url), CacheConfig())
    try:
        yield remote
    finally:
        await remote.close()


async def _backup(args: argparse.Namespace) -> int:
    from ._progress import progress_bar
    from .backup import backup
    from .backup.layout import single_server
    from .remote import raw_command

    async with _tool_remote(args.url) as remote:
        single_server(remote, "backup")
        total = int(await raw_command(remote, "DBSIZE", "DBSIZE"))
        bar = progress_bar("backup", total, "key")
        try:
            summary = await backup(remote, args.out, accounts=args.account,
                                   page=args.page, depth=args.depth, bar=bar)
        finally:
            bar.close()
    if args.json:
        import json

        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    who = f"accounts {', '.join(summary.accounts)}" if summary.accounts else "every cal: key"
    print(f"backup of {who} from {remote.safe_url} -> {summary.path}: {summary.keys} keys, "
          f"{summary.records} records, {summary.entries} entries, "
          f"{summary.bytes / MB:.2f} MB of JSON in {summary.seconds:.2f} s")
    print(f"{'family':<22}{'keys':>10}{'entries':>12}{'MB':>10}")
    for name, count in sorted(summary.families.items()):
        print(f"{name:<22}{count.keys:>10}{count.entries:>12}{count.bytes / MB:>10.2f}")
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from ._progress import progress_bar
    from .backup import RestoreCount, restore

    def progress(total: int) -> Bar:
        return progress_bar("restore", total, "record")

    async with _tool_remote(args.url) as remote:
        summary = await restore(
            remote, args.file, mode=args.mode, dry_run=args.dry_run, depth=args.depth,
            progress=progress, say=print if args.dry_run else None,
        )
    if args.json:
        import json

        print(json.dumps(summary.as_dict(), indent=2))
    else:
        what = "would be restored (dry run: nothing written)" if args.dry_run else "restored"
        print(f"{summary.path} -> {remote.safe_url}, mode {summary.mode}: {summary.records} "
              f"records {what} in {summary.seconds:.2f} s")
        columns = list(RestoreCount.__dataclass_fields__)
        print(f"{'family':<22}" + "".join(f"{c:>11}" for c in columns))
        for name, count in sorted(summary.families.items()):
            print(f"{name:<22}" + "".join(f"{getattr(count, c):>11}" for c in columns))
        if not args.dry_run:
            for line in summary.conflicts_and_errors():
                print(line)
        for event in summary.events:
            print(f"published {event}")
    return 1 if summary.errors else 0


_BACKUP_HELP = """\
Write every cal: key of the layout (or, with --account, those tenants' keys plus
their entries of the shared tables) to FILE: JSON lines, gzip when FILE ends in .gz.
Each line holds a key (or a page of a large key): name, Redis type, remaining TTL,
values byte for byte. The keyspace is walked with SCAN and large keys with
HSCAN/SSCAN/ZSCAN/LRANGE/XRANGE pages (never KEYS, never one giant reply), so the
server keeps serving other clients. FILE appears only once the backup is complete.
It is a per-key copy, not a point-in-time snapshot (use BGSAVE for that).
Key families come from the key builder, in both key styles; keys of any other
cal: name are copied by their type. A progress bar is shown on a terminal when
tqdm is installed (pip install 'cal-redis[tools]'). Prints keys, entries and MB
per key family.
"""

_RESTORE_HELP = """\
Recreate the keys of a backup FILE, with their types and their TTLs as they
remained at backup time, in pipelined batches. The whole file is checked first: a
corrupt or truncated line is reported with its line number and nothing is applied.
--mode skip-existing (default): keys already in the target are left alone; a key
of another type there is reported as a conflict, not overwritten.
--mode replace: existing keys are deleted and recreated.
A tenant backup's entries of shared tables are written field by field (HSETNX, or
HSET with --mode replace); a shared table is never replaced whole. Keys not in the
file are never touched, and running it twice gives the same data. Afterwards a
<Kind>Sync event is published for every cached namespace (and account) written, so
running caches drop what they hold of it. --dry-run prints what would change and
writes nothing. Exit status 1 when a key could not be restored.
"""


_WARM_HELP = """\
Warm an L1 from Redis the way CallableCache.warm() / CacheConfig(warm=WarmPlan(...))
does at connect, and print what it read, what it stored and how long it took per
namespace. This process' L1 is thrown away afterwards: the command measures a
warm-up (and checks the data decodes) before it is configured in a service.
Whole tables are read with HSCAN (never KEYS, never one giant reply), id lists with
HMGETs of 1,000 ids; every fill is fenced, so it never overrides a concurrent write.
"""


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
    where.add_argument("--url", help="the Redis URL to check (default: $CAL_VALKEY_HOST): "
                       "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://")
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
    p_backup = sub.add_parser(
        "backup", help="back up the cal: keys (or tenants) to a JSON lines file",
        description=_BACKUP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_backup.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_backup.add_argument("--out", required=True, metavar="FILE",
                          help="the backup file (gzip when it ends in .gz)")
    p_backup.add_argument("--account", action="append", metavar="ACCOUNT",
                          help="back up only this tenant's data (repeat for more)")
    p_backup.add_argument("--page", type=int, default=250,
                          help="keys per SCAN call and entries per page of a large key "
                               "(default 250: each page well under a millisecond of server "
                               "time)")
    p_backup.add_argument("--depth", type=int, default=20,
                          help="keys read per round trip (default 20)")
    p_backup.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_restore = sub.add_parser(
        "restore", help="restore a backup file (idempotent; --dry-run shows changes)",
        description=_RESTORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_restore.add_argument("file", metavar="FILE", help="a file written by backup")
    p_restore.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_restore.add_argument("--mode", choices=("skip-existing", "replace"), default="skip-existing",
                           help="what to do with keys already there (default skip-existing)")
    p_restore.add_argument("--dry-run", action="store_true",
                           help="print what would change, write nothing")
    p_restore.add_argument("--depth", type=int, default=20,
                           help="script calls per round trip (default 20)")
    p_restore.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_warm = sub.add_parser(
        "warm", help="warm an L1 from Redis and time it", description=_WARM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_warm.add_argument("--url", help="Redis URL (default: $CAL_VALKEY_HOST)")
    p_warm.add_argument(
        "--namespaces", default="regions,proxies,accounts", metavar="LIST",
        help=f"comma-separated whole tables to warm, among {','.join(WARMABLE)} "
             "(default: regions,proxies,accounts; '' for none)",
    )
    p_warm.add_argument("--all-users", action="store_true",
                        help="warm the whole users table too (up to its budget)")
    p_warm.add_argument("--users-file", metavar="FILE",
                        help="warm these user ids (one per line) instead of the whole table")
    p_warm.add_argument("--devices", action="append", metavar="ACCOUNT",
                        help="warm this account's devices (repeat for more accounts)")
    p_warm.add_argument("--budget-mb", type=float, metavar="MB",
                        help="L1 budget of every warmed namespace, in MB (default: "
                             "CacheConfig's); raise it to time a warm-up of everything")
    p_warm.add_argument("--page", type=int, default=1000,
                        help="fields asked per HSCAN call (default 1000)")
    p_warm.add_argument("--json", action="store_true", help="print the result as JSON")
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
            return asyncio.run(_inspect(args.url, args.json, args.sample, args.cluster or None))
        if args.command == "watch":
            if args.interval <= 0:
                parser.error("--interval must be > 0")
            from ._inspect import watch

            asyncio.run(watch(_url(args.url), account=args.account, count=args.count,
                              seconds=args.seconds, interval=args.interval))
            return 0
        if args.command == "migrate-keys":
            return asyncio.run(_migrate_keys(args.url, args.dry_run))
        if args.command == "warm":
            return asyncio.run(_warm(args, _read_ids(args.users_file)))
        if args.command == "backup":
            return asyncio.run(_backup(args))
        if args.command == "restore":
            return asyncio.run(_restore(args))
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(rest)
    except (CalRedisError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
