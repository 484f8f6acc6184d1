"""Event dispatch: event type -> the engine that owns the key, and the L1 gate policy.

Every pub/sub message goes through :meth:`Dispatcher.on_message`: checked (channel,
size, JSON, tenant), applied to L1 by the engine registered for its type, then handed
to the app subscriptions (:class:`~.streams.Hub`). Problems are counted and logged,
never raised.

**Degraded / connected.** While the event subscription is down, events are lost and
L1 cannot be trusted: :meth:`Dispatcher.degraded` stops filling L1, stops tracking own
writes and flushes it; :meth:`Dispatcher.connected` (the subscriptions are confirmed)
flushes it once more (whatever was cached before may have missed an event; a fill
that began before is fenced out by the flush) and opens the gate again.
With :attr:`Dispatcher.hold_on_loss` a loss suspends L1 instead of flushing it: the
entries are held, not served (for serve-stale on error and event-log replay).

**Logging** (logger ``cal_redis.sync``). A loss is a WARNING naming the server, the
channels and the cause; the recovery an INFO with the cause and how long the cache was
degraded. Every L1 flush is logged with its reason and what it dropped per namespace
(INFO when it dropped entries or follows a loss, else DEBUG); a namespace dropped by a
``<Kind>Sync`` event is logged at INFO at most once per namespace every
:data:`LOG_EVERY` seconds. Nothing is logged per event at INFO.

**Metrics.** :attr:`Dispatcher.state`, the namespace flushes by reason
(:attr:`Counters.flushes`) and the time spent degraded (:meth:`Dispatcher.degraded_seconds`)
are read by :mod:`cal_redis.metrics`; an :attr:`Dispatcher.observer` (set only when
metrics are recorded) is told of every event applied to L1, for the event lag.

**Selective invalidation.** ``<Kind>Invalidate`` drops the entries of the ids in its
``ids``; ``<Kind>Sync`` of an account-scoped kind (on an account channel) drops only
that account's entries; :data:`TENANT_INVALIDATE` on an account channel drops that
account's entries in every namespace (each engine's ``drop_account``). Dropping is
safe in any order, so these events are applied even when they are this instance's
own (docs/wire-format.md, "Events").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from .. import codec
from ..errors import CalRedisError, SerializationError, ValidationError
from ..models import Event
from .log import EventLog

if TYPE_CHECKING:
    from .._context import Context
    from ..metrics import Observer
    from .streams import Hub

__all__ = (
    "ACTIONS",
    "FLUSH_REASONS",
    "MAX_EVENT_BYTES",
    "TENANT_INVALIDATE",
    "Counters",
    "Dispatcher",
    "EventTarget",
)

log = logging.getLogger("cal_redis.sync")

#: The actions of an entity event type (``<Kind><Action>``, e.g. ``UserUpdate``).
ACTIONS: Final = ("Create", "Update", "Delete", "Sync", "Invalidate")
#: The event type that drops one account's entries from every namespace; valid only on
#: that account's channel (the channel names the account).
TENANT_INVALIDATE: Final = "TenantInvalidate"
#: Payloads larger than this are rejected unparsed (counted as malformed).
MAX_EVENT_BYTES: Final = 1 << 20
#: A warning per problem kind at most this often (seconds); repeats go to debug.
LOG_EVERY: Final = 10.0

_APPLIED = frozenset(("refresh", "invalidate", "sync"))

#: Why L1 was flushed (the ``reason`` of :attr:`Counters.flushes` and of the log lines).
FLUSH_REASONS: Final = (
    "starting", "lost", "subscribed", "resubscribed", "closed", "sync_event", "topology",
    "replay",
)


class _Spec(Protocol):
    @property
    def namespace(self) -> str:
        """The engine's L1 namespace."""


class EventTarget(Protocol):
    """What an engine offers the dispatcher for the event types it owns."""

    @property
    def spec(self) -> _Spec:
        """The engine's spec (its L1 namespace)."""

    @property
    def global_log(self) -> str | None:
        """The event log of the kind's global events (None: not logged, or scoped)."""

    def apply_event(self, action: str, event: Event, account_id: str | None) -> str:
        """Apply a received event to L1; return what was done."""

    def reset(self) -> None:
        """L1 was flushed: forget pending own writes."""

    def drop_local(self, action: str, event: Event, account_id: str | None) -> None:
        """This instance published ``event`` by hand: drop what it names."""

    def drop_account(self, account_id: str) -> int:
        """Drop every L1 entry of ``account_id``; return how many were dropped."""


class Counters:
    """What the dispatcher and the subscriber count (see :class:`~.subscriber.SyncState`)."""

    __slots__ = (
        "applied",
        "disconnects",
        "echoes",
        "flushes",
        "malformed",
        "received",
        "reconnects",
        "replay_flushes",
        "replayed",
        "replays",
        "superseded",
        "topology_flushes",
        "unknown",
        "unlogged",
    )

    def __init__(self) -> None:
        self.received = self.applied = self.echoes = self.superseded = 0
        self.unknown = self.malformed = self.disconnects = self.reconnects = 0
        #: Gaps replayed from the event logs, events read doing so, scopes (a table's
        #: namespace or an account's part) flushed because a log did not cover a gap,
        #: and events of logged kinds that came without a log id.
        self.replays = self.replayed = self.replay_flushes = self.unlogged = 0
        #: (namespace, reason) -> how many times that namespace was flushed for that
        #: reason (one of :data:`FLUSH_REASONS`).
        self.flushes: dict[tuple[str, str], int] = {}
        #: Flushes after a Redis Cluster failover or slot-map change.
        self.topology_flushes = 0


class _LogLimiter:
    """One message per reason every :data:`LOG_EVERY` seconds at ``level`` (WARNING
    by default); the rest at debug."""

    __slots__ = ("_last", "level")

    def __init__(self, level: int = logging.WARNING) -> None:
        self._last: dict[str, float] = {}
        self.level = level

    def __call__(self, reason: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) >= LOG_EVERY:
            self._last[reason] = now
            log.log(self.level, msg + " (repeats within %.0f s logged at debug level)",
                    *args, LOG_EVERY)
        else:
            log.debug(msg, *args)


@dataclass(frozen=True, slots=True)
class Kind:
    """How one event type reaches L1."""

    scoped: bool  # account-scoped kind: only valid on an account channel
    action: str
    target: EventTarget
    namespace: str  # the target's L1 namespace
    log: str | None  # the event log of a global kind (None: scoped, or not logged)


class Dispatcher:
    """Routes events to engines and app subscriptions; owns the L1 gate policy."""

    __slots__ = (
        "_cause",
        "_ctx",
        "_degraded_at",
        "_degraded_total",
        "_hub",
        "_lost_at",
        "_sync_log",
        "_targets",
        "apply_l1",
        "counters",
        "hold_on_loss",
        "log",
        "observer",
        "state",
        "types",
        "warn",
    )

    def __init__(
        self, ctx: Context, hub: Hub, targets: Mapping[str, tuple[EventTarget, bool]]
    ) -> None:
        """``targets``: event prefix (``"User"``) -> (engine, account-scoped)."""
        self._ctx = ctx
        self._hub = hub
        self.counters = Counters()
        #: True when received events are applied to this cache's L1.
        self.apply_l1 = False
        #: On a loss, suspend L1 (hold its entries without serving them) instead of
        #: flushing it: set when something can use the held entries (serve-stale on
        #: error, or replaying the missed events from the event log).
        self.hold_on_loss = ctx.config.event_log == "replay"
        #: The event logs, when gaps are replayed (``CacheConfig(event_log="replay")``).
        self.log: EventLog | None = EventLog(ctx) if ctx.config.event_log == "replay" else None
        #: Rate-limited warnings (one per reason every LOG_EVERY seconds).
        self.warn = _LogLimiter()
        self._sync_log = _LogLimiter(logging.INFO)
        #: ``<Kind><Action>`` -> how it is applied, for every event-synced kind.
        self.types: dict[str, Kind] = {
            prefix + action: Kind(scoped, action, target, target.spec.namespace,
                                  None if scoped else target.global_log)
            for prefix, (target, scoped) in targets.items()
            for action in ACTIONS
        }
        #: The subscriber's state as the gate sees it: ``connected``, ``degraded``,
        #: ``stopped`` or ``disabled`` (as :class:`~.subscriber.SyncState` names them).
        self.state = "degraded" if ctx.config.sync else "disabled"
        #: Told of every event applied to L1 (set only while metrics are recorded).
        self.observer: Observer | None = None
        self._degraded_at: float | None = None  # monotonic start of the degraded period
        self._degraded_total = 0.0  # seconds degraded, periods that ended
        self._lost_at: float | None = None  # monotonic time of the last loss
        self._cause = ""  # why the subscription was last lost
        self._targets: tuple[EventTarget, ...] = tuple(
            {id(target): target for target, _ in targets.values()}.values()
        )

    # -- the gate ------------------------------------------------------------------------
    def _where(self) -> str:
        keys = self._ctx.keys
        return (f"{keys.EVENTS} and {keys.account_events_pattern()} on "
                f"{self._ctx.remote.safe_url} (instance {self._ctx.instance_id[:12]})")

    def _count_flush(self, namespace: str, reason: str) -> None:
        flushes = self.counters.flushes
        flushes[namespace, reason] = flushes.get((namespace, reason), 0) + 1

    def _flush(self, reason: str) -> None:
        local = self._ctx.local
        dropped = []
        for ns in local.namespaces:
            n = local.flush(ns)
            self._count_flush(ns, reason)
            if n:
                dropped.append(f"{ns} {n}")
        for kind in self.types.values():
            kind.target.reset()
        level = logging.INFO if dropped or reason in ("lost", "resubscribed") else logging.DEBUG
        log.log(level, "L1 flushed (%s) on instance %s: %s", reason,
                self._ctx.instance_id[:12], ", ".join(dropped) or "nothing cached")

    def _suspend(self) -> None:
        """Hold L1's entries without serving them (events may be lost from now on);
        forget pending own writes, as a flush does."""
        self._ctx.local.suspend()
        for kind in self.types.values():
            kind.target.reset()
        log.info("L1 suspended (lost) on instance %s: entries held, not served",
                 self._ctx.instance_id[:12])

    def _degrade_clock(self, on: bool) -> None:
        now = time.monotonic()
        if self._degraded_at is not None and not on:
            self._degraded_total += now - self._degraded_at
            self._degraded_at = None
        elif self._degraded_at is None and on:
            self._degraded_at = now

    def degraded_seconds(self) -> float:
        """Seconds this cache's L1 has spent degraded (closed gate) so far."""
        start = self._degraded_at
        ongoing = time.monotonic() - start if start is not None else 0.0
        return self._degraded_total + ongoing

    def degraded(self, reason: str | None) -> None:
        """Events may be lost from now on: close the gate and flush L1.

        ``reason``: why the subscription was lost; None when it is only starting.
        """
        if reason is not None:
            self.counters.disconnects += 1
            self._lost_at = time.monotonic()
            self._cause = reason
            log.warning(
                "sync degraded: event subscription to %s lost (%s); L1 %s, cache-first "
                "reads go to Redis until it is restored", self._where(), reason,
                "held (suspended)" if self.hold_on_loss and self.apply_l1 else
                "flushed and bypassed",
            )
        if self.apply_l1:
            gate = self._ctx.gate
            gate.fill_ok = False
            gate.track = False
            self.state = "degraded"
            self._degrade_clock(True)
            if reason is not None and self.hold_on_loss:
                self._suspend()
            else:
                self._flush("starting" if reason is None else "lost")

    @property
    def replays(self) -> bool:
        """True when a gap is to be replayed from the event logs rather than flushed."""
        return self.log is not None and self.log.active and self.apply_l1

    async def replay(self) -> bool:
        """The subscriptions are confirmed again after a gap: replay the missed events
        from the event logs into the suspended L1 (see :mod:`.log`). False when L1 must
        be flushed instead (never raises: a Redis error falls back to the flush)."""
        assert self.log is not None
        try:
            return await self.log.replay(self)
        except CalRedisError as err:
            self.warn("replay", "event-log replay failed (%s): L1 flushed instead", err)
            return False

    def connected(self, again: bool, replayed: bool = False) -> None:
        """Both subscriptions confirmed: flush once more (unless the gap was just
        ``replayed`` into L1), then open the gate.

        No await between the flush and opening the gate: a fill that began before the
        flush is fenced out by it.
        """
        if again:
            self.counters.reconnects += 1
            lost_at = self._lost_at
            took = time.monotonic() - lost_at if lost_at is not None else 0.0
            log.info("sync restored: subscribed to %s again after %.3f s degraded "
                     "(cause: %s); L1 in use again", self._where(), took, self._cause)
        else:
            log.debug("subscribed to %s", self._where())
        if self.apply_l1:
            if not replayed:
                self._flush("resubscribed" if again else "subscribed")
            self._ctx.local.resume()
            gate = self._ctx.gate
            gate.fill_ok = True
            gate.track = True
            self.state = "connected"
            self._degrade_clock(False)

    def flush(self, reason: str) -> None:
        """L1 may hold what Redis lost (a cluster failover): flush it, and fence out
        every fill and own write in flight, without closing the gate."""
        self.counters.topology_flushes += 1
        log.warning("Redis Cluster topology changed under instance %s (%s): L1 flushed",
                    self._ctx.instance_id[:12], reason)
        if self.apply_l1:
            self._flush("topology")

    def flush_namespace(self, namespace: str, reason: str) -> None:
        """Drop one namespace of L1 (fencing its fills in flight); counted and logged."""
        n = self._ctx.local.flush(namespace)
        self._count_flush(namespace, reason)
        for kind in self.types.values():
            if kind.namespace == namespace:
                kind.target.reset()
        log.info("L1 namespace %s flushed (%s) on instance %s: %d entries", namespace, reason,
                 self._ctx.instance_id[:12], n)

    def flush_account(self, account_id: str, reason: str) -> None:
        """Drop one account's entries from every namespace of L1; logged."""
        n = self.drop_account(account_id)
        log.info("L1 entries of account %s flushed (%s) on instance %s: %d entries",
                 account_id, reason, self._ctx.instance_id[:12], n)

    def log_key(self, event_type: str, account_id: str | None) -> str | None:
        """The event log an event of ``event_type`` published on ``account_id``'s channel
        (None: ``cal:events``) goes to; None when such events are not logged (trunk IPs,
        application events)."""
        kind = self.types.get(event_type)
        if account_id is not None:
            if kind is not None or event_type == TENANT_INVALIDATE:
                return self._ctx.keys.account_log(account_id)
            return None
        return kind.log if kind is not None else None

    def replay_event(self, event: Event, account: str | None, channel: str) -> None:
        """Apply an event read from a log (the gate is closed: it only drops)."""
        self._apply(event, account, channel, replayed=True)

    def stopped(self) -> None:
        """The cache closed: L1 is flushed and never filled again."""
        gate = self._ctx.gate
        gate.fill_ok = False
        gate.track = False
        if self.state != "disabled":
            self.state = "stopped"
        self._degrade_clock(False)
        self._flush("closed")

    def _namespace_synced(self, kind: Kind, event: Event, channel: str, dropped: int) -> None:
        """A ``<Kind>Sync`` event dropped ``kind``'s namespace: count and log it."""
        self._count_flush(kind.namespace, "sync_event")
        self._sync_log(
            "sync:" + kind.namespace,
            "L1 namespace %s flushed (sync_event): %s on %s from instance %s dropped %d entries",
            kind.namespace, event.type, channel, (event.origin or "?")[:12], dropped,
        )

    # -- messages ------------------------------------------------------------------------
    def on_message(self, channel: bytes | str, data: bytes | str) -> None:
        """Handle one pub/sub message (never raises: problems are counted and logged)."""
        c = self.counters
        c.received += 1
        ch = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        keys = self._ctx.keys
        account: str | None = None
        if ch != keys.EVENTS:
            account = keys.account_id_from_channel(ch)
            if account is None:
                c.malformed += 1
                self.warn("channel", "event on unexpected channel %r ignored", ch[:300])
                return
        if len(data) > MAX_EVENT_BYTES:
            c.malformed += 1
            self.warn("size", "event of %d bytes on %r ignored (limit %d)", len(data), ch,
                       MAX_EVENT_BYTES)
            return
        try:
            event = codec.decode_event(data, channel=ch)
        except SerializationError as err:
            c.malformed += 1
            self.warn("json", "malformed event ignored: %s", err)
            return
        if account is not None:
            owner = event.account_id
            if not owner:
                event = msgspec.structs.replace(event, account_id=account)
            elif owner != account:
                c.malformed += 1
                self.warn("tenant", "event %r naming account %r on the channel of %r ignored",
                           event.type, owner, account)
                return
        if self.apply_l1 and not self._apply(event, account, ch):
            return
        self._hub.deliver(event, account)

    def _apply(
        self, event: Event, account: str | None, channel: str, replayed: bool = False
    ) -> bool:
        """Apply an event to L1; False when it is malformed (not passed on)."""
        c = self.counters
        kind = self.types.get(event.type)
        elog = self.log
        if elog is not None and not replayed:
            logged_in = self.log_key(event.type, account)
            if logged_in is not None and not elog.seen(event, logged_in):
                c.unlogged += 1
                self.warn(
                    "unlogged",
                    "%s event on %s carries no log_id although CacheConfig(event_log='replay') "
                    "requires every writer to log its events: replay switched off, gaps flush "
                    "L1 until this cache is restarted (instance %s)", event.type, channel,
                    self._ctx.instance_id[:12])
        if kind is None and event.type == TENANT_INVALIDATE:
            if account is None:
                c.malformed += 1
                self.warn("scope", "%s event on the wrong channel %r ignored", event.type, channel)
                return False
            self.drop_account(account)
            c.applied += 1
            return True
        if kind is None:
            # Application events (publish_account_event) are legitimate: debug only.
            c.unknown += 1
            log.debug("event of unknown type %r not applied to L1", event.type[:100])
            return True
        if kind.scoped != (account is not None):
            c.malformed += 1
            self.warn("scope", "%s event on the wrong channel %r ignored", event.type, channel)
            return False
        held = len(self._ctx.local[kind.namespace]) if kind.action == "Sync" else 0
        try:
            outcome = kind.target.apply_event(kind.action, event, account)
        except (SerializationError, ValidationError) as err:
            c.malformed += 1
            self.warn("data", "malformed %s event ignored: %s", event.type, err)
            return False
        except Exception:
            c.malformed += 1
            log.exception("applying %s event failed", event.type)
            return False
        if outcome in _APPLIED:
            c.applied += 1
            if outcome == "sync":
                self._namespace_synced(kind, event, channel, held)
            observer = self.observer
            if observer is not None and not replayed:
                observer.event_applied(event, kind.namespace)
        elif outcome == "echo":
            c.echoes += 1
        elif outcome == "superseded":
            c.superseded += 1
        return True

    def apply_own(self, event: Event, account: str | None) -> None:
        """Our own hand-published event: drop what it names locally (its echo is skipped)."""
        kind = self.types.get(event.type)
        if kind is not None:
            held = len(self._ctx.local[kind.namespace]) if kind.action == "Sync" else 0
            kind.target.drop_local(kind.action, event, account)
            if kind.action == "Sync":
                channel = self._ctx.keys.EVENTS if account is None else \
                    self._ctx.keys.account_events(account)
                self._namespace_synced(kind, event, channel, held)
        elif event.type == TENANT_INVALIDATE and account is not None:
            self.drop_account(account)

    def drop_account(self, account_id: str) -> int:
        """Drop ``account_id``'s entries from every namespace of L1; return how many."""
        return sum(target.drop_account(account_id) for target in self._targets)
