"""``python -m cal_redis inspect`` and ``watch``: what a Redis holds for cal-redis, and a
live tail of its event channels.

``inspect`` walks the keyspace once (``SCAN MATCH cal:*``) and sorts every key into a
family of the layout (users, account devices, sessions, queues, ...; the families'
patterns come from :class:`~cal_redis.keys.KeyBuilder`), then counts each family's keys
and fields or members and measures its memory with ``MEMORY USAGE`` (every key, or a
random sample of ``--sample`` keys per family, scaled up, for big families). It adds
the event channels' subscribers and the server's version and role.

``watch`` subscribes like a cache does (``SUBSCRIBE cal:events``, ``PSUBSCRIBE
cal:account:*:events``), prints every valid event decoded, a line of per-type rates
every ``--interval`` seconds and a summary at the end (Ctrl-C, ``--count`` or
``--seconds``).

Both go through a :class:`~cal_redis.CallableCache` with L1 off, so every Redis call
has the library's error mapping and retries.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TextIO

from .cache import CallableCache
from .config import CacheConfig
from .errors import CalRedisError
from .keys import KeyBuilder
from .models import Event

__all__ = ("FAMILIES", "Family", "inspect", "format_inspect", "watch")

#: Client-name prefix of the caches' pub/sub connections (see sync.subscriber).
SYNC_CLIENT_PREFIX: Final = "cal-redis-sync-"

# Placeholders handed to the key builder, then turned into wildcards: an account id,
# another id, a trunk IP (whose text may hold ':').
_ACC, _ID, _IP = "\u00a7a\u00a7", "\u00a7i\u00a7", "192.0.2.254"
_SEGMENT, _ANY = "[^:]*", ".+"

#: A random sample of this many keys per family is measured with MEMORY USAGE (default).
DEFAULT_SAMPLE: Final = 200
_CHUNK: Final = 500  # commands per pipeline


@dataclass(frozen=True, slots=True)
class Family:
    """One key family of the layout: its name, Redis type and key (pattern) builder."""

    name: str
    type: str  # hash, set, zset, string
    key: Callable[[KeyBuilder], str]
    scope: str = "global"  # or "account"

    def pattern(self, keys: KeyBuilder) -> str:
        """The family's keys as a SCAN/KEYS glob (``*`` for each id)."""
        return self.key(keys).replace(_ACC, "*").replace(_ID, "*").replace(_IP, "*")

    def regex(self, keys: KeyBuilder) -> re.Pattern[str]:
        """A regex matching exactly the family's keys (ids hold no ``:``; IPs may)."""
        text = re.escape(self.key(keys))
        for mark, wild in ((_ACC, _SEGMENT), (_ID, _SEGMENT), (_IP, _ANY)):
            text = text.replace(re.escape(mark), wild)
        return re.compile(text + r"\Z")


#: Every key family of the layout (docs/wire-format.md), in the order shown.
FAMILIES: Final[tuple[Family, ...]] = (
    Family("regions", "hash", lambda k: k.REGIONS),
    Family("region idents", "hash", lambda k: k.REGION_IDENTS),
    Family("proxies", "hash", lambda k: k.PROXIES),
    Family("accounts", "hash", lambda k: k.ACCOUNTS),
    Family("account idents", "hash", lambda k: k.ACCOUNT_IDENTS),
    Family("users", "hash", lambda k: k.USERS),
    Family("user idents", "hash", lambda k: k.USER_IDENTS),
    Family("trunk IPs", "string", lambda k: k.trunk_ip(_IP)),
    Family("ws connections", "hash", lambda k: k.WS_CONNECTIONS),
    Family("key style marker", "string", lambda k: k.LAYOUT),
    Family("region event log", "stream", lambda k: k.table_log(k.REGIONS)),
    Family("proxy event log", "stream", lambda k: k.table_log(k.PROXIES)),
    Family("account table event log", "stream", lambda k: k.table_log(k.ACCOUNTS)),
    Family("user event log", "stream", lambda k: k.table_log(k.USERS)),
    Family("account devices", "hash", lambda k: k.devices(_ACC), "account"),
    Family("device idents", "hash", lambda k: k.device_idents(_ACC), "account"),
    Family("DDIs", "hash", lambda k: k.ddis(_ACC), "account"),
    Family("trunks", "hash", lambda k: k.trunks(_ACC), "account"),
    Family("hooks", "hash", lambda k: k.hooks(_ACC), "account"),
    Family("assets", "hash", lambda k: k.assets(_ACC), "account"),
    Family("addresses", "hash", lambda k: k.addresses(_ACC), "account"),
    Family("agent statuses", "string", lambda k: k.agent_status(_ACC, _ID), "account"),
    Family("agents by user", "hash", lambda k: k.agents_by_user(_ACC), "account"),
    Family("agents registered", "set", lambda k: k.agents_registered(_ACC), "account"),
    Family("agents available", "set", lambda k: k.agents_available(_ACC), "account"),
    Family("agents connected", "set", lambda k: k.agents_connected(_ACC), "account"),
    Family("sessions", "string", lambda k: k.session(_ACC, _ID), "account"),
    Family("active sessions", "set", lambda k: k.sessions_active(_ACC), "account"),
    Family("queues", "zset", lambda k: k.queue(_ACC, _ID), "account"),
    Family("queue metadata", "hash", lambda k: k.queues_meta(_ACC), "account"),
    Family("conversations", "string", lambda k: k.conversation(_ACC, _ID), "account"),
    Family("flow states", "string", lambda k: k.flow_state(_ACC, _ID), "account"),
    Family("account ws connections", "hash", lambda k: k.ws_connections(_ACC), "account"),
    Family("account event logs", "stream", lambda k: k.account_log(_ACC), "account"),
)

_SIZE_COMMAND = {"hash": "hlen", "set": "scard", "zset": "zcard", "stream": "xlen"}


@dataclass
class FamilyReport:
    """What ``inspect`` found for one family."""

    name: str
    pattern: str
    type: str
    keys: int = 0
    #: Hash fields / set or sorted-set members over all its keys (None for strings).
    fields: int | None = None
    #: MEMORY USAGE in bytes: exact, or scaled up from a sample (``estimated``).
    memory: int = 0
    estimated: bool = False
    sampled: int = 0
    _sample: list[str] = field(default_factory=list, repr=False)
    _all: list[str] = field(default_factory=list, repr=False)


def _str(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _queue(command: str) -> Callable[[Any, str], object]:
    def queue(pipe: Any, key: str) -> object:
        return getattr(pipe, command)(key)

    return queue


async def _pipelined(cache: CallableCache, what: str, keys: list[str],
                     queue: Callable[[Any, str], object]) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]

        def build(pipe: Any, chunk: list[str] = chunk) -> None:
            for key in chunk:
                queue(pipe, key)

        out += await cache.remote.pipeline(what, build, read=True)
    return out


async def inspect(url: str, *, cluster: bool | None = None, sample: int = DEFAULT_SAMPLE,
                  seed: int | None = None) -> dict[str, Any]:
    """Walk the keyspace of ``url`` (every master of a Redis Cluster) and report
    families, channels and server (a dict: :func:`format_inspect` renders it).
    ``cluster``: the key style (None: the topology's, as a cache's)."""
    config = CacheConfig(cluster=cluster, sync=False, local_cache=False, metrics=False)
    rng = random.Random(seed)
    async with await CallableCache.connect(url, config=config) as cache:
        remote, cmd = cache.remote, cache.remote.cmd
        keys = cache.keys
        reports = [FamilyReport(f.name, f.pattern(keys), f.type) for f in FAMILIES]
        matchers = [(f.regex(keys), r) for f, r in zip(FAMILIES, reports, strict=True)]
        other = 0
        async for key in remote.scan_keys("cal:*"):
            for regex, rep in matchers:
                if regex.match(key):
                    rep.keys += 1
                    if rep.type != "string":
                        rep._all.append(key)
                    # reservoir sample of `sample` keys for MEMORY USAGE
                    if len(rep._sample) < sample:
                        rep._sample.append(key)
                    else:
                        j = rng.randrange(rep.keys)
                        if j < sample:
                            rep._sample[j] = key
                    break
            else:
                other += 1
        for rep in reports:
            size = _SIZE_COMMAND.get(rep.type)
            if size is not None:
                counts = await _pipelined(cache, size.upper(), rep._all, _queue(size))
                rep.fields = sum(int(n) for n in counts)
            if rep._sample:
                used = await _pipelined(cache, "MEMORY USAGE", rep._sample,
                                        _queue("memory_usage"))
                measured = sum(int(n or 0) for n in used)
                rep.sampled = len(rep._sample)
                rep.estimated = rep.sampled < rep.keys
                rep.memory = round(measured * rep.keys / rep.sampled)
        server = await remote.server_info()
        replication: dict[str, Any] = await remote.read("INFO", cmd.info, "replication")
        memory: dict[str, Any] = await remote.read("INFO", cmd.info, "memory")
        if remote.is_cluster:
            cluster_remote: Any = remote
            dbsize = 0
            for name in cluster_remote.topology.masters:
                dbsize += int(await remote.read("DBSIZE", cluster_remote.node(name).dbsize))
        else:
            dbsize = int(await remote.read("DBSIZE", cmd.dbsize))
        channels = await _channels(cache, keys)
    from ._server_info import describe_server

    return {
        "server": {
            "url": cache.remote.safe_url,
            "version": describe_server(server),
            "role": _str(replication.get("role", "?")),
            "used_memory": int(memory.get("used_memory", 0)),
            "keys_in_db": int(dbsize),
        },
        "key_style": keys.style,
        "families": [
            {k: v for k, v in asdict(r).items() if not k.startswith("_")} for r in reports
        ],
        "other_cal_keys": other,
        "channels": channels,
    }


async def _channels(cache: CallableCache, keys: KeyBuilder) -> dict[str, Any]:
    """Subscribers of the event channels: on a Redis Cluster summed over every node
    (classic pub/sub: each subscriber sits on one node)."""
    remote: Any = cache.remote
    servers = ([remote.node(n) for n in remote.topology.nodes] if remote.is_cluster
               else [remote.cmd])
    subscribers = patterns = 0
    account_channels: set[bytes] = set()
    caches: int | None = 0
    for server in servers:
        numsub = await remote.read("PUBSUB NUMSUB", server.pubsub_numsub, keys.EVENTS)
        subscribers += int(numsub[0][1]) if numsub else 0
        patterns += int(await remote.read("PUBSUB NUMPAT", server.pubsub_numpat))
        account_channels.update(await remote.read(
            "PUBSUB CHANNELS", server.pubsub_channels, keys.account_events_pattern()))
        try:
            clients: list[dict[str, Any]] = await remote.read("CLIENT LIST", server.client_list)
        except CalRedisError:  # CLIENT may be refused by an ACL: not counted
            caches = None
        else:
            if caches is not None:
                caches += sum(1 for c in clients
                              if _str(c.get("name", "")).startswith(SYNC_CLIENT_PREFIX)
                              and int(c.get("psub", 0)) > 0)
    return {
        keys.EVENTS: subscribers,
        "patterns_subscribed": patterns,
        "pattern": keys.account_events_pattern(),
        "account_channels_subscribed": len(account_channels),
        "caches_subscribed": caches,
    }


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_inspect(report: dict[str, Any]) -> str:
    """The report of :func:`inspect` as the table ``inspect`` prints."""
    srv = report["server"]
    lines = [
        f"server   {srv['version']} at {srv['url']}, role {srv['role']}, "
        f"{srv['keys_in_db']} keys in the database, {_bytes(srv['used_memory'])} used",
        f"layout   {report['key_style']} key style",
        "",
        f"{'family':<24}{'pattern':<36}{'type':<8}{'keys':>8}{'fields':>10}{'memory':>12}",
        "-" * 98,
    ]
    for fam in report["families"]:
        fields = "-" if fam["fields"] is None else str(fam["fields"])
        mem = _bytes(fam["memory"]) if fam["keys"] else "-"
        if fam["estimated"]:
            mem = "~" + mem
        lines.append(f"{fam['name']:<24}{fam['pattern']:<36}{fam['type']:<8}{fam['keys']:>8}"
                     f"{fields:>10}{mem:>12}")
    lines.append(f"{'other cal:* keys':<68}{report['other_cal_keys']:>8}")
    if any(f["estimated"] for f in report["families"]):
        lines.append("~ memory scaled up from a random sample of the family's keys (--sample)")
    ch = report["channels"]
    caches = "not allowed (CLIENT LIST)" if ch["caches_subscribed"] is None else \
        str(ch["caches_subscribed"])
    lines += [
        "",
        "channels",
        f"  {'cal:events subscribers (SUBSCRIBE)':<56}{ch['cal:events']:>6}",
        f"  {'distinct patterns subscribed, any client (NUMPAT)':<56}"
        f"{ch['patterns_subscribed']:>6}",
        f"  {'account channels with SUBSCRIBE subscribers':<56}"
        f"{ch['account_channels_subscribed']:>6}",
        f"  {'cal-redis caches subscribed (' + SYNC_CLIENT_PREFIX + '* clients)':<56}{caches:>6}",
    ]
    return "\n".join(lines)


# -- watch ---------------------------------------------------------------------------------
def _clock(ns: int) -> str:
    t = time.localtime(ns // 1_000_000_000)
    return time.strftime("%H:%M:%S", t) + f".{ns // 1000 % 1_000_000:06d}"


def format_event(event: Event, received_ns: int, width: int = 160) -> str:
    """One line of ``watch``: time received, type, id, account, origin, lag and data."""
    lag = ""
    if event.ts_us:
        lag = f" lag={(received_ns // 1000 - event.ts_us) / 1000:.2f}ms"
    elif event.ts:
        lag = f" lag={received_ns // 1_000_000 - event.ts}ms"
    parts = [f"{_clock(received_ns)}  {event.type:<20}"]
    if event.id:
        parts.append(f" id={event.id}")
    if event.account_id:
        parts.append(f" account={event.account_id}")
    if event.origin:
        parts.append(f" origin={event.origin[:8]}")
    parts.append(lag)
    if event.has_data:
        data = bytes(event.data).decode(errors="replace")
        if len(data) > width:
            data = data[: width - 3] + "..."
        parts.append(f" data={data}")
    return "".join(parts)


def _rates(counts: Counter[str], seconds: float) -> str:
    total = sum(counts.values())
    per = ", ".join(f"{t} {n} ({n / seconds:.1f}/s)" for t, n in counts.most_common())
    return f"{total} events in {seconds:.1f} s ({total / seconds:.1f}/s)" + (
        f": {per}" if per else "")


async def watch(
    url: str, *, account: str | None = None, count: int | None = None,
    seconds: float | None = None, interval: float = 5.0, out: TextIO | None = None,
) -> int:
    """Print the events of ``url``'s channels as they come (see the module docstring);
    return how many were printed. ``account``: only events of that account (on its
    channel, or global ones naming it)."""
    out = out or sys.stdout
    config = CacheConfig(local_cache=False, metrics=False)
    if account is not None:
        from .keys import validate_id

        validate_id(account, "account")
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def handler(event: Event) -> None:
        if account is None or event.account_id == account:
            queue.put_nowait((time.time_ns(), event))

    loop = asyncio.get_running_loop()
    async with await CallableCache.connect(url, config=config) as cache:
        cache.add_event_handler(handler)
        keys = cache.keys
        where = keys.account_events(account) + f" and {keys.EVENTS}" if account else \
            f"{keys.EVENTS} and {keys.account_events_pattern()}"
        print(f"watching {where} on {cache.remote.safe_url} (Ctrl-C to stop)", file=out,
              flush=True)
        start = loop.time()
        deadline = start + seconds if seconds is not None else None
        totals: Counter[str] = Counter()
        window: Counter[str] = Counter()
        next_rates = start + interval
        try:
            while count is None or sum(totals.values()) < count:
                now = loop.time()
                wake = next_rates if deadline is None else min(next_rates, deadline)
                if deadline is not None and now >= deadline:
                    break
                try:
                    received, event = await asyncio.wait_for(queue.get(), max(0.0, wake - now))
                except asyncio.TimeoutError:
                    pass
                else:
                    totals[event.type] += 1
                    window[event.type] += 1
                    print(format_event(event, received), file=out, flush=True)
                if loop.time() >= next_rates:
                    print(f"-- last {interval:.1f} s: {_rates(window, interval)}", file=out,
                          flush=True)
                    window.clear()
                    next_rates += interval
        finally:
            took = max(loop.time() - start, 1e-9)
            malformed = cache.sync_state.malformed
            print(f"-- total: {_rates(totals, took)}; malformed {malformed}", file=out,
                  flush=True)
    return sum(totals.values())
