"""What applications see of events: publishing, subscriptions, the sync state.

:class:`SyncOps` is the mixin of :class:`~cal_redis.CallableCache` with
``publish_event``, ``publish_account_event``, ``events()``, ``add_event_handler``
and ``sync_state``. The subscriber that receives events and keeps L1 in step, and
the :class:`~cal_redis.sync.EventStream` that ``events()`` returns, live in
:mod:`cal_redis.sync`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import codec
from .._context import NeedsContext
from ..engine import _lua
from ..engine.writes import log_limits
from ..errors import ClosedError, ValidationError
from ..keys import validate_id
from ..models import Event, now_ms_us

if TYPE_CHECKING:
    from ..sync import EventHandler, EventStream, Subscriber, SyncState

__all__ = ("SyncOps",)


class SyncOps(NeedsContext):
    """Mixin of :class:`~cal_redis.CallableCache`: publishing, app subscriptions, sync state."""

    _sync: Subscriber

    def _stamp(self, event: Event, account_id: str | None) -> Event:
        if not isinstance(event, Event):
            raise ValidationError("event", f"expected Event, got {type(event).__name__}")
        if type(event.type) is not str or not event.type:
            raise ValidationError("event", "type must be a non-empty string")
        changes: dict[str, Any] = {}
        if event.log_id:
            changes["log_id"] = ""  # set by the script that logs it
        if not event.origin:
            changes["origin"] = self._ctx.instance_id
        if not event.ts:
            changes["ts"], changes["ts_us"] = now_ms_us()
        if account_id is not None:
            if event.account_id and event.account_id != account_id:
                raise ValidationError(
                    "event",
                    f"event.account_id {event.account_id!r} is not the account {account_id!r}",
                )
            if not event.account_id:
                changes["account_id"] = account_id
        kind = self._sync.dispatcher.types.get(event.type)
        if kind is not None:
            if kind.scoped and account_id is None:
                raise ValidationError(
                    "event",
                    f"{event.type} belongs on an account channel: use publish_account_event",
                )
            if not kind.scoped and account_id is not None:
                raise ValidationError(
                    "event", f"{event.type} belongs on {self._ctx.keys.EVENTS}: use publish_event"
                )
            if kind.action == "Invalidate":
                if not event.ids:
                    raise ValidationError("event", f"{event.type} needs a non-empty ids")
            elif kind.action != "Sync":
                validate_id(event.id, "event.id")
        return msgspec.structs.replace(event, **changes) if changes else event

    async def publish_event(self, event: Event) -> int:
        """Publish ``event`` on ``cal:events``; return how many subscribers received it.

        ``origin`` (this instance) is filled when empty, ``ts`` and ``ts_us`` (now)
        when ``ts`` is. Entity
        events (``UserUpdate``...) also invalidate this instance's own L1 entry,
        since the subscriber skips its own echoes.

        Example::

            await cache.publish_event(Event(type="UserUpdate", id="u1"))  # invalidate u1 everywhere
        """
        event = self._stamp(event, None)
        n = await self._publish(self._ctx.keys.EVENTS, event, None)
        self._sync.dispatcher.apply_own(event, None)
        return n

    async def publish_account_event(self, account_id: str, event: Event) -> int:
        """Publish ``event`` on ``account_id``'s channel; return the receiver count.

        ``account_id`` is validated before any I/O; ``event.account_id`` must be
        that account or empty (then filled). ``origin``, ``ts`` and ``ts_us`` are filled
        as by :meth:`publish_event`.

        Example::

            await cache.publish_account_event("acc42", Event(type="CallStarted", id="c1"))
        """
        channel = self._ctx.keys.account_events(account_id)
        event = self._stamp(event, account_id)
        n = await self._publish(channel, event, account_id)
        self._sync.dispatcher.apply_own(event, account_id)
        return n

    async def _publish(self, channel: str, event: Event, account_id: str | None) -> int:
        """PUBLISH ``event``; an event that changes what L1 holds is also appended to its
        event log in the same script (docs/wire-format.md, "Event log")."""
        payload = codec.encode(event)
        remote = self._ctx.remote
        log_key = self._sync.dispatcher.log_key(event.type, account_id)
        if log_key is None:
            n: int = await remote.write("PUBLISH " + channel, remote.cmd.publish, channel, payload)
            return int(n)
        retention, cap = log_limits(self._ctx.config)
        n = await remote.script("PUBLISH " + channel, _lua.LOG_PUBLISH, [log_key],
                                [channel, payload, retention, cap])
        return int(n)

    def events(self, account_id: str | None = None, *, maxsize: int = 1000) -> EventStream:
        """Subscribe the application to the events of ``account_id`` (global ones if None).

        Events are buffered from this call on (up to ``maxsize``; when full the
        newest is dropped and counted). Own events are included. Leaving the loop
        ends the subscription::

            async for event in cache.events(account_id="acc42"):
                print(event.type, event.id)

        With ``CacheConfig(sync=False)`` the pub/sub connection is opened by the
        first call (events published before it is confirmed are not seen).
        """
        if account_id is not None:
            validate_id(account_id, "account_id")
        if type(maxsize) is not int or maxsize < 1:
            raise ValidationError("maxsize", "must be an int >= 1")
        if self._sync.stopped:
            raise ClosedError("the cache is closed")
        return self._sync.open_stream(account_id, maxsize)

    def add_event_handler(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for every valid event received, after it reached L1.

        It runs synchronously in the subscriber task: keep it short and never
        block. Exceptions are logged and swallowed. Returns a function that removes it.
        """
        if not callable(handler):
            raise ValidationError("handler", "must be callable")
        hub = self._sync.hub
        hub.add_handler(handler)
        return lambda: hub.remove_handler(handler)

    @property
    def sync_state(self) -> SyncState:
        """Snapshot of the event subscriber (state, timestamps, counters)."""
        return self._sync.snapshot()
