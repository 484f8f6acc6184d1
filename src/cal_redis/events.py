"""What applications see of events: publishing, subscriptions, the sync state.

:class:`SyncOps` is the mixin of :class:`~cal_redis.CallableCache` with
``publish_event``, ``publish_account_event``, ``events()``, ``add_event_handler``
and ``sync_state``; :class:`EventStream` is the bounded async iterator ``events()``
returns. The subscriber that receives events and keeps L1 in step lives in
:mod:`cal_redis.sync`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from . import codec
from .errors import CalRedisError, ValidationError
from .keys import validate_id
from .models import Event, now_ms

if TYPE_CHECKING:
    from .config import CacheConfig
    from .keys import KeyBuilder
    from .local import LocalTier
    from .ops._engine import Entities
    from .remote import Remote
    from .sync import EventHandler, Subscriber, SyncState

__all__ = ("EventStream", "SyncOps")


class EventStream:
    """An app subscription: an async iterator over the events of one channel.

    Returned by :meth:`SyncOps.events`; it receives events from the moment it is
    created. Each stream has its own bounded buffer: when it is full, the newest
    event is dropped and counted in :attr:`dropped` (and in the cache's
    ``app_overflow``). Leaving an ``async for`` loop, :meth:`aclose`, ``async with``
    exit, or closing the cache ends it.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_items",
        "_owner",
        "_waiter",
        "account_id",
        "dropped",
        "maxsize",
    )

    def __init__(self, owner: Subscriber, account_id: str | None, maxsize: int) -> None:
        self.account_id = account_id
        self.maxsize = maxsize
        #: Events dropped because the buffer was full.
        self.dropped = 0
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._owner: Subscriber | None = owner

    def _offer(self, event: Event) -> bool:
        if self._closed:
            return True
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    @property
    def closed(self) -> bool:
        """True once the stream has ended."""
        return self._closed

    def qsize(self) -> int:
        """Events buffered and not yet consumed."""
        return len(self._items)

    def close(self) -> None:
        """End the stream: unregister it and drop what is buffered (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        if self._owner is not None:
            self._owner._unregister(self)
            self._owner = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aclose(self) -> None:
        """Async alias of :meth:`close` (as for async generators)."""
        self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise StopAsyncIteration
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"account {self.account_id!r}" if self.account_id is not None else "global"
        return f"<EventStream {where} buffered={len(self._items)} dropped={self.dropped}>"


class SyncOps:
    """Mixin of :class:`~cal_redis.CallableCache`: publishing, app subscriptions, sync state."""

    config: CacheConfig
    remote: Remote
    keys: KeyBuilder
    local: LocalTier
    instance_id: str
    engines: dict[str, Entities[Any]]
    _sync: Subscriber

    def _stamp(self, event: Event, account_id: str | None) -> Event:
        if not isinstance(event, Event):
            raise ValidationError("event", f"expected Event, got {type(event).__name__}")
        if type(event.type) is not str or not event.type:
            raise ValidationError("event", "type must be a non-empty string")
        changes: dict[str, Any] = {}
        if not event.origin:
            changes["origin"] = self.instance_id
        if not event.ts:
            changes["ts"] = now_ms()
        if account_id is not None:
            if event.account_id and event.account_id != account_id:
                raise ValidationError(
                    "event",
                    f"event.account_id {event.account_id!r} is not the account {account_id!r}",
                )
            if not event.account_id:
                changes["account_id"] = account_id
        kind = self._sync.types.get(event.type)
        if kind is not None:
            if kind.scoped and account_id is None:
                raise ValidationError(
                    "event",
                    f"{event.type} belongs on an account channel: use publish_account_event",
                )
            if not kind.scoped and account_id is not None:
                raise ValidationError(
                    "event", f"{event.type} belongs on {self.keys.EVENTS}: use publish_event"
                )
            if kind.action != "Sync":
                validate_id(event.id, "event.id")
        return msgspec.structs.replace(event, **changes) if changes else event

    async def publish_event(self, event: Event) -> int:
        """Publish ``event`` on ``cal:events``; return how many subscribers received it.

        ``origin`` (this instance) and ``ts`` (now) are filled when empty. Entity
        events (``UserUpdate``...) also invalidate this instance's own L1 entry,
        since the subscriber skips its own echoes.

        Example::

            await cache.publish_event(Event(type="UserUpdate", id="u1"))  # invalidate u1 everywhere
        """
        event = self._stamp(event, None)
        payload = codec.encode(event)
        channel = self.keys.EVENTS
        client = self.remote.client
        n: int = await self.remote.write(
            "PUBLISH " + channel, lambda: client.publish(channel, payload)
        )
        self._sync.apply_own(event, None)
        return int(n)

    async def publish_account_event(self, account_id: str, event: Event) -> int:
        """Publish ``event`` on ``account_id``'s channel; return the receiver count.

        ``account_id`` is validated before any I/O; ``event.account_id`` must be
        that account or empty (then filled). ``origin`` and ``ts`` are filled when empty.

        Example::

            await cache.publish_account_event("acc42", Event(type="CallStarted", id="c1"))
        """
        channel = self.keys.account_events(account_id)
        event = self._stamp(event, account_id)
        payload = codec.encode(event)
        client = self.remote.client
        n: int = await self.remote.write(
            "PUBLISH " + channel, lambda: client.publish(channel, payload)
        )
        self._sync.apply_own(event, account_id)
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
        sub = self._sync
        if sub._stopped:
            raise CalRedisError("the cache is closed")
        if not sub.running:
            sub._launch(apply_l1=False)
        return sub.open_stream(account_id, maxsize)

    def add_event_handler(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for every valid event received, after it reached L1.

        It runs synchronously in the subscriber task: keep it short and never
        block. Exceptions are logged and swallowed. Returns a function that removes it.
        """
        if not callable(handler):
            raise ValidationError("handler", "must be callable")
        sub = self._sync
        sub.add_handler(handler)
        return lambda: sub.remove_handler(handler)

    @property
    def sync_state(self) -> SyncState:
        """Snapshot of the event subscriber (state, timestamps, counters)."""
        return self._sync.snapshot()
