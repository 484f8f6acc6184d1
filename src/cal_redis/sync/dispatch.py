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
from ..errors import SerializationError, ValidationError
from ..models import Event

if TYPE_CHECKING:
    from .._context import Context
    from .streams import Hub

__all__ = (
    "ACTIONS",
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


class EventTarget(Protocol):
    """What an engine offers the dispatcher for the event types it owns."""

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
        "malformed",
        "received",
        "reconnects",
        "superseded",
        "unknown",
    )

    def __init__(self) -> None:
        self.received = self.applied = self.echoes = self.superseded = 0
        self.unknown = self.malformed = self.disconnects = self.reconnects = 0


class _LogLimiter:
    """One warning per reason every :data:`LOG_EVERY` seconds; the rest at debug."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, reason: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) >= LOG_EVERY:
            self._last[reason] = now
            log.warning(msg + " (repeats within %.0f s logged at debug level)", *args, LOG_EVERY)
        else:
            log.debug(msg, *args)


@dataclass(frozen=True, slots=True)
class Kind:
    """How one event type reaches L1."""

    scoped: bool  # account-scoped kind: only valid on an account channel
    action: str
    target: EventTarget


class Dispatcher:
    """Routes events to engines and app subscriptions; owns the L1 gate policy."""

    __slots__ = ("_ctx", "_hub", "_targets", "apply_l1", "counters", "types", "warn")

    def __init__(
        self, ctx: Context, hub: Hub, targets: Mapping[str, tuple[EventTarget, bool]]
    ) -> None:
        """``targets``: event prefix (``"User"``) -> (engine, account-scoped)."""
        self._ctx = ctx
        self._hub = hub
        self.counters = Counters()
        #: True when received events are applied to this cache's L1.
        self.apply_l1 = False
        #: Rate-limited warnings (one per reason every LOG_EVERY seconds).
        self.warn = _LogLimiter()
        #: ``<Kind><Action>`` -> how it is applied, for every event-synced kind.
        self.types: dict[str, Kind] = {
            prefix + action: Kind(scoped, action, target)
            for prefix, (target, scoped) in targets.items()
            for action in ACTIONS
        }
        self._targets: tuple[EventTarget, ...] = tuple(
            {id(target): target for target, _ in targets.values()}.values()
        )

    # -- the gate ------------------------------------------------------------------------
    def _flush(self) -> None:
        self._ctx.local.flush_all()
        for kind in self.types.values():
            kind.target.reset()

    def degraded(self, reason: str | None) -> None:
        """Events may be lost from now on: close the gate and flush L1."""
        if self.apply_l1:
            gate = self._ctx.gate
            gate.fill_ok = False
            gate.track = False
            self._flush()
        if reason is not None:
            self.counters.disconnects += 1
            log.warning(
                "event subscription lost (%s): L1 flushed, cache-first reads go to Redis "
                "until it is restored", reason
            )

    def connected(self, again: bool) -> None:
        """Both subscriptions confirmed: flush once more, then open the gate.

        No await between the flush and opening the gate: a fill that began before the
        flush is fenced out by it.
        """
        if self.apply_l1:
            self._flush()
            gate = self._ctx.gate
            gate.fill_ok = True
            gate.track = True
        if again:
            self.counters.reconnects += 1
            log.warning("event subscription restored; L1 in use again")
        else:
            log.debug("subscribed to events (instance %s)", self._ctx.instance_id)

    def stopped(self) -> None:
        """The cache closed: L1 is flushed and never filled again."""
        gate = self._ctx.gate
        gate.fill_ok = False
        gate.track = False
        self._flush()

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

    def _apply(self, event: Event, account: str | None, channel: str) -> bool:
        """Apply an event to L1; False when it is malformed (not passed on)."""
        c = self.counters
        kind = self.types.get(event.type)
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
        elif outcome == "echo":
            c.echoes += 1
        elif outcome == "superseded":
            c.superseded += 1
        return True

    def apply_own(self, event: Event, account: str | None) -> None:
        """Our own hand-published event: drop what it names locally (its echo is skipped)."""
        kind = self.types.get(event.type)
        if kind is not None:
            kind.target.drop_local(kind.action, event, account)
        elif event.type == TENANT_INVALIDATE and account is not None:
            self.drop_account(account)

    def drop_account(self, account_id: str) -> int:
        """Drop ``account_id``'s entries from every namespace of L1; return how many."""
        return sum(target.drop_account(account_id) for target in self._targets)
