"""Event-log replay: after a gap in the event subscription, read the events missed from
the event logs instead of flushing L1.

Every write script appends its event to a capped Redis Stream (its *log*: one per
global entity table, ``cal:log:users``, and one per account, ``cal:account:{a}:log``;
docs/wire-format.md, "Event log") and publishes it with the entry's id as ``log_id``.
With ``CacheConfig(event_log="replay")`` a cache remembers, per log, the id of the last
event it received; L1 is suspended (held, not served) while the subscription is down,
and once it is confirmed again :meth:`EventLog.replay` reads each log the held
entries depend on from that id on and applies what it finds *as drops* (the gate is
closed, so an event never refreshes an entry during a replay; dropping is safe in any
order). Live events that arrive meanwhile wait in the socket and are applied after the
replay, in their order. A log that no longer covers the gap (trimmed past the last id
received, or gone) flushes its scope: the namespace of a table, or one account's part
of every namespace. Namespaces without a log (trunk IPs: their keys share no slot
with any log) are flushed on every gap.

A replay is only correct when every writer of these tables logs its events: an event
of a logged kind arriving without ``log_id`` switches replay off for the life of the
cache (logged at WARNING, counted in ``unlogged``), and gaps flush again.

On one server, a changed ``run_id`` (the server restarted, maybe without its data)
flushes all of L1 instead; on a Redis Cluster, a failover already flushes L1
(:meth:`~.subscriber.Subscriber._watch_cluster`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .. import codec
from ..errors import SerializationError

if TYPE_CHECKING:
    from .._context import Context
    from ..models import Event
    from .dispatch import Dispatcher

__all__ = ("MARKER_MARGIN_MS", "PAGE", "REPLAY_LIMIT", "EventLog", "parse_id")

log = logging.getLogger("cal_redis.sync")

#: Entries read per log and round trip during a replay.
PAGE: Final = 1000
#: A log with more entries than this to replay flushes its scope instead (reading and
#: applying them would cost more than re-reading what the scope holds).
REPLAY_LIMIT: Final = 20_000
#: The starting point of a log never read is this much before the subscription began
#: (server clocks of a cluster's nodes may differ by that much).
MARKER_MARGIN_MS: Final = 2000


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """A stream id (``"1733072400000-3"``) as a comparable ``(ms, seq)`` pair."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class _Plan:
    """One log to read: its key, where to start, and what it covers."""

    key: str
    start: str  # the last id received (exclusive), or the marker (inclusive)
    inclusive: bool
    account: str | None  # the account of an account log
    namespaces: tuple[str, ...] = ()  # the namespaces of a table log
    events: list[Any] = field(default_factory=list)


class EventLog:
    """What a cache knows of the event logs: the last id received per log, and the
    replay after a gap (see the module docstring)."""

    __slots__ = ("_ctx", "_run_id", "broken", "last", "marker")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        #: Last ``log_id`` received per log key (a table's log or an account's).
        self.last: dict[str, str] = {}
        #: The starting point of every log not read since: ``"<ms>-0"``, inclusive.
        self.marker: str | None = None
        #: True once an event of a logged kind came without ``log_id``.
        self.broken = False
        self._run_id: str | None = None

    @property
    def active(self) -> bool:
        """True while gaps are replayed (not switched off by an unlogged event)."""
        return not self.broken

    async def begin(self) -> None:
        """Take the starting point of every log from the server's clock (before the
        subscription is made), and the server's identity."""
        remote = self._ctx.remote
        sec, usec = await remote.read("TIME", remote.cmd.time)
        self.marker = f"{int(sec) * 1000 + int(usec) // 1000 - MARKER_MARGIN_MS}-0"
        self.last.clear()
        if not remote.is_cluster:
            self._run_id = str((await remote.server_info()).get("run_id", ""))

    def seen(self, event: Event, log_key: str) -> bool:
        """Note the ``log_id`` of a received event that belongs in ``log_key`` (as
        :meth:`Dispatcher.log_key` decides); False (and replay switched off) when it has none."""
        if not event.log_id:
            self.broken = True
            return False
        self.last[log_key] = event.log_id
        return True

    def _plans(self, d: Dispatcher) -> tuple[list[_Plan], list[str]]:
        """The logs the held entries depend on, and the namespaces without a log."""
        local = self._ctx.local
        marker = self.marker or "0-0"
        tables: dict[str, list[str]] = {}
        unlogged: set[str] = set()
        scoped: set[str] = set()
        for kind in d.types.values():
            if kind.scoped:
                scoped.add(kind.namespace)
            elif kind.log is not None:
                tables.setdefault(kind.log, [])
                if kind.namespace not in tables[kind.log]:
                    tables[kind.log].append(kind.namespace)
            else:
                unlogged.add(kind.namespace)
        plans = []
        for key, namespaces in tables.items():
            if any(len(local[ns]) for ns in namespaces):
                last = self.last.get(key)
                plans.append(_Plan(key, last or marker, last is None, None, tuple(namespaces)))
        accounts = {k[0] for ns in scoped for k in local[ns].keys()  # noqa: SIM118 (not iterable)
                    if type(k) is tuple}
        keys = self._ctx.keys
        for account in sorted(accounts):
            key = keys.account_log(account)
            last = self.last.get(key)
            plans.append(_Plan(key, last or marker, last is None, account))
        return plans, sorted(unlogged)

    async def replay(self, d: Dispatcher) -> bool:
        """Replay the gap into L1 (suspended, gate closed); False when the caller must
        flush all of L1 instead (server restarted, or a Redis error)."""
        remote = self._ctx.remote
        if self._run_id is not None:
            run_id = str((await remote.server_info()).get("run_id", ""))
            if run_id != self._run_id:
                log.warning("Redis restarted during the gap (run_id %s -> %s): L1 flushed",
                            self._run_id[:8], run_id[:8])
                await self.begin()
                return False
        plans, unlogged = self._plans(d)
        for ns in unlogged:
            d.flush_namespace(ns, "replay")
        pending = list(plans)
        read = 0
        while pending:
            replies = await self._read(pending)
            more = []
            for plan, reply in zip(pending, replies, strict=True):
                entries = self._covered(plan, reply)
                if entries is None:
                    self._uncovered(d, plan, reply)
                    continue
                plan.events += entries
                read += len(entries)
                if len(plan.events) > REPLAY_LIMIT:
                    self._uncovered(d, plan, reply)
                elif len(entries) == PAGE:
                    plan.start = entries[-1][0].decode()
                    plan.inclusive = False
                    more.append(plan)
                else:
                    self._apply(d, plan)
            pending = more
        d.counters.replays += 1
        d.counters.replayed += read
        log.info("sync gap replayed on instance %s: %d events from %d logs",
                 self._ctx.instance_id[:12], read, len(plans))
        return True

    async def _read(self, plans: list[_Plan]) -> list[Any]:
        from ..engine import _lua

        def build(pipe: Any) -> None:
            for plan in plans:
                start = plan.start if plan.inclusive else "(" + plan.start
                _lua.LOG_READ.queue(pipe, [plan.key], [start, PAGE])

        return await self._ctx.remote.pipeline("replay the event logs", build, read=True)

    @staticmethod
    def _covered(plan: _Plan, reply: Any) -> list[Any] | None:
        """The entries read if the log still holds every event after the start, else None.

        Trimming only ever removes the oldest entries, so the log covers the gap when
        nothing was removed at all (``entries-added == length``), or its first entry is
        at or before the start, or nothing was added since the start; and no entry after
        the start was deleted (XDEL: ``max-deleted-entry-id``).
        """
        if not reply or int(reply[0]) == 0:
            return None  # no log: nothing says what changed
        start = parse_id(plan.start)
        if parse_id(reply[1]) > start:
            return None
        entries: list[Any] = list(reply[3] or [])
        if int(reply[5]) == int(reply[6]) or parse_id(reply[2]) <= start:
            return entries
        first = reply[4]
        if first and parse_id(first) <= start:
            return entries
        return None  # trimmed past what was received

    def _uncovered(self, d: Dispatcher, plan: _Plan, reply: Any) -> None:
        """The log does not cover the gap: flush its scope, and start after its end."""
        if plan.account is not None:
            d.flush_account(plan.account, "replay")
        else:
            for ns in plan.namespaces:
                d.flush_namespace(ns, "replay")
        if reply and int(reply[0]) == 1:
            self.last[plan.key] = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        else:
            self.last.pop(plan.key, None)
        d.counters.replay_flushes += 1

    def _apply(self, d: Dispatcher, plan: _Plan) -> None:
        keys = self._ctx.keys
        channel = keys.account_events(plan.account) if plan.account else keys.EVENTS
        last = None
        for entry_id, fields in plan.events:
            last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            raw = _field(fields, b"e")
            if raw is None:
                continue
            try:
                event = codec.decode_event(raw, channel=channel)
            except SerializationError as err:
                d.counters.malformed += 1
                d.warn("json", "malformed event in log %s ignored: %s", plan.key, err)
                continue
            d.replay_event(event, plan.account, channel)
        if last is not None:
            self.last[plan.key] = last


def _field(fields: Iterable[Any], name: bytes) -> bytes | None:
    """The value of field ``name`` of a stream entry (a flat list or a dict)."""
    if isinstance(fields, dict):
        value = fields.get(name)
        return value if isinstance(value, bytes) else None
    it = iter(fields)
    for f, v in zip(it, it, strict=False):
        if f == name:
            return v if isinstance(v, bytes) else None
    return None
