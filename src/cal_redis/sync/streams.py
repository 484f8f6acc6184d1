"""App subscriptions: :class:`EventStream` (the bounded async iterator that
``CallableCache.events()`` returns) and :class:`Hub`, which holds a cache's streams
and handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType

from ..models import Event

__all__ = ("EventHandler", "EventStream", "Hub")

log = logging.getLogger("cal_redis.sync")


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

    def __init__(self, owner: Hub, account_id: str | None, maxsize: int) -> None:
        self.account_id = account_id
        self.maxsize = maxsize
        #: Events dropped because the buffer was full.
        self.dropped = 0
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._owner: Hub | None = owner

    def offer(self, event: Event) -> bool:
        """Buffer ``event``; False (and counted in :attr:`dropped`) when the buffer is full."""
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
            self._owner.unregister(self)
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


EventHandler = Callable[[Event], object]


class Hub:
    """The app subscriptions of one cache: event streams by account (None = global)
    and event handlers. The dispatcher offers every valid event here, after L1."""

    __slots__ = ("_handlers", "_streams", "overflow")

    def __init__(self) -> None:
        self._streams: dict[str | None, weakref.WeakSet[EventStream]] = {}
        self._handlers: list[EventHandler] = []
        #: Events dropped because an app stream's buffer was full.
        self.overflow = 0

    def open_stream(self, account_id: str | None, maxsize: int) -> EventStream:
        """A new stream of the events of ``account_id`` (None: global events)."""
        stream = EventStream(self, account_id, maxsize)
        self._streams.setdefault(account_id, weakref.WeakSet()).add(stream)
        return stream

    def unregister(self, stream: EventStream) -> None:
        """Forget ``stream`` (called when it closes)."""
        streams = self._streams.get(stream.account_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.account_id]

    def add_handler(self, handler: EventHandler) -> None:
        """Call ``handler(event)`` for every valid event."""
        self._handlers.append(handler)

    def remove_handler(self, handler: EventHandler) -> None:
        """Stop calling ``handler`` (no error if it was not added)."""
        with contextlib.suppress(ValueError):
            self._handlers.remove(handler)

    @property
    def open_streams(self) -> int:
        """Streams currently open."""
        return sum(len(s) for s in self._streams.values())

    def deliver(self, event: Event, account_id: str | None) -> None:
        """Offer ``event`` to the streams of its channel, then to every handler."""
        streams = self._streams.get(account_id)
        if streams:
            for stream in list(streams):
                if not stream.offer(event):
                    self.overflow += 1
        if self._handlers:
            for handler in list(self._handlers):
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler %r failed", handler)

    def close(self) -> None:
        """End every stream."""
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.close()
        self._streams.clear()
