"""Sync: change events on Redis pub/sub keep every instance's L1 in step.

Every cache-first write publishes an :class:`~cal_redis.models.Event` inside the
MULTI/EXEC of the write itself, so the order of events on a channel is the order of
the writes in Redis. Each :class:`~cal_redis.CallableCache` owns one pub/sub
connection (started by ``connect()``, stopped by ``close()``) that SUBSCRIBEs
``cal:events`` and PSUBSCRIBEs ``cal:account:*:events``, and applies each event to
L1 through the entity's engine (:meth:`Entities.apply_event
<cal_redis.ops._engine.Entities.apply_event>`): refresh, invalidate or drop the
namespace; own echoes only settle the pending-write count.

**Degraded mode.** While the pub/sub connection is down, events are lost, so L1
can no longer be trusted. From the moment a loss is detected the cache stops
filling L1 (``fill_ok = False``), stops tracking pending own writes and flushes L1:
cache-first reads go to Redis until the subscriptions are confirmed again, at
which point L1 is flushed once more (everything cached before that point may have
missed an event) and filling resumes. Flushing is what makes "never serve a value
older than Redis" hold across a loss; the price is a burst of Redis reads after a
reconnect. A connection that dies silently (no FIN, a frozen server) is caught by
a heartbeat: a PING every ``config.heartbeat_interval`` seconds, and the
connection is declared dead when nothing at all (event, confirmation or pong) has
arrived for ``2 * heartbeat_interval``.

**App subscriptions.** :meth:`SyncOps.events` yields the events of one account
channel (or of ``cal:events``) from a bounded queue per consumer; a full queue
drops the newest event and counts it, so a slow consumer never delays L1
invalidation. See docs/sync.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import codec
from .config import redact_url
from .errors import CalRedisError, ConfigurationError, SerializationError, ValidationError
from .events import EventStream
from .models import Event, now_ms

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from .cache import CallableCache
    from .ops._engine import Entities

__all__ = ("ACTIONS", "MAX_EVENT_BYTES", "EventHandler", "Subscriber", "SyncState")

log = logging.getLogger("cal_redis.sync")

#: The actions of an entity event type (``<Kind><Action>``, e.g. ``UserUpdate``).
ACTIONS: Final = ("Create", "Update", "Delete", "Sync")
#: Payloads larger than this are rejected unparsed (counted as malformed).
MAX_EVENT_BYTES: Final = 1 << 20
#: Reconnection backoff: first delay and cap (seconds), with jitter.
INITIAL_BACKOFF: Final = 0.02
MAX_BACKOFF: Final = 2.0
#: A warning per problem kind at most this often (seconds); repeats go to debug.
LOG_EVERY: Final = 10.0

_APPLIED = frozenset(("refresh", "invalidate", "sync"))


@dataclass(frozen=True, slots=True)
class SyncState:
    """A snapshot of the subscriber: its state and its counters.

    ``state`` is ``"connected"`` (events applied to L1), ``"degraded"`` (pub/sub
    connection lost or not yet confirmed: L1 is flushed and bypassed),
    ``"stopped"`` (cache closed) or ``"disabled"`` (``CacheConfig(sync=False)``).
    ``since`` is when that state began and ``last_event_at`` when the last event
    arrived (ms since the epoch, UTC).
    """

    state: str
    since: int
    last_event_at: int | None
    #: Messages received on the event channels (valid or not).
    received: int = 0
    #: Events that refreshed or invalidated an L1 entry, or dropped a namespace.
    applied: int = 0
    #: This instance's own events coming back (pending-write count settled).
    echoes: int = 0
    #: Foreign events ignored because an own write of the same key is newer.
    superseded: int = 0
    #: Well-formed events of a type no engine handles (application events).
    unknown: int = 0
    #: Rejected payloads: bad JSON or shape, too large, wrong channel, other account.
    malformed: int = 0
    #: Connections lost (or found dead by the heartbeat) after being subscribed.
    disconnects: int = 0
    #: Successful re-subscriptions after a loss.
    reconnects: int = 0
    #: Events dropped because an app subscriber's queue was full.
    app_overflow: int = 0
    #: App subscriptions (:meth:`SyncOps.events`) currently open.
    app_streams: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for ``stats()``)."""
        return asdict(self)


class _Counters:
    __slots__ = (
        "app_overflow",
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
        self.app_overflow = 0


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
class _Kind:
    """How one event type reaches L1."""

    scoped: bool  # account-scoped kind: only valid on an account channel
    action: str
    apply: Callable[[Event, str | None], str]
    engine: Entities[Any] | None = None


async def _push_passthrough(response: Any) -> Any:
    # redis-py's default handler logs str(response) of every push frame at debug
    # level: a per-event cost (and a few MB for a huge payload) we do not want.
    return response


EventHandler = Callable[[Event], object]


class Subscriber:
    """The pub/sub connection of one cache and the task that owns it.

    Lifecycle: :meth:`start` (by ``CallableCache.connect``), :meth:`stop` (by
    ``close``). One background task connects, subscribes, reads and dispatches,
    pings, and reconnects with backoff; see the module docstring.
    """

    def __init__(self, cache: CallableCache) -> None:
        self.cache = cache
        self.counters = _Counters()
        self.apply_l1 = False
        self._state = "disabled" if not cache.config.sync else "degraded"
        self._since = now_ms()
        self._last_event_at: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stopped = False
        self._streams: dict[str | None, weakref.WeakSet[EventStream]] = {}
        self._handlers: list[EventHandler] = []
        #: ``<Kind><Action>`` -> what applies it to L1, for every event-synced kind.
        self.types: dict[str, _Kind] = {}
        for kind, engine in cache.engines.items():
            for action in ACTIONS:
                self.types[kind + action] = _Kind(
                    engine.spec.scoped, action, functools.partial(engine.apply_event, action),
                    engine,
                )
        for action in ACTIONS:  # trunk IP -> account: global, invalidate-only events
            self.types["TrunkIp" + action] = _Kind(
                False, action, functools.partial(cache._trunk_ips.apply_event, action)
            )
        apply_flow_state = getattr(cache, "apply_flow_state_event", None)
        if apply_flow_state is not None:  # flow states: cache-first outside the engine
            for action in ACTIONS:
                self.types["FlowState" + action] = _Kind(True, action, apply_flow_state)
        self._warn = _LogLimiter()
        self._pool: aioredis.ConnectionPool | None = None
        self._ever_connected = False
        self._live = False

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the background task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self, *, apply_l1: bool, wait: float | None = None) -> bool:
        """Start the task; with ``wait``, wait up to that long for the subscriptions.

        Returns True when subscribed. With ``apply_l1`` the cache's L1 follows the
        events (and is bypassed until the first confirmation).
        """
        self._launch(apply_l1)
        if wait is None:
            return self._state == "connected"
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except asyncio.TimeoutError:
            log.warning(
                "event subscription not confirmed within %.1f s; L1 stays bypassed "
                "until it is (retrying in the background)", wait
            )
            return False
        return True

    def _launch(self, apply_l1: bool) -> None:
        if self._stopped:
            raise CalRedisError("the cache is closed")
        if self._task is not None:
            return
        cache = self.cache
        self.apply_l1 = apply_l1
        if apply_l1:
            self._enter_degraded(None)
        config = cache.config
        try:
            self._pool = aioredis.ConnectionPool.from_url(
                cache.remote.url,
                socket_connect_timeout=config.connect_timeout,
                socket_timeout=config.socket_timeout,
                protocol=config.protocol,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
                client_name="cal-redis-sync-" + cache.instance_id[:12],
            )
        except ValueError as err:
            raise ConfigurationError(f"invalid Redis URL {redact_url(cache.remote.url)!r}: {err}") from err
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"cal-redis-sync-{cache.instance_id[:8]}"
        )

    async def stop(self) -> None:
        """Stop the task, close the connection and end every app stream (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            # Python < 3.12 can swallow a cancellation that races with a completing
            # asyncio.wait_for (redis-py uses it for socket writes): cancel again
            # until the task is done; the loops also check _stopped.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        for streams in list(self._streams.values()):
            for stream in list(streams):
                stream.close()
        self._streams.clear()
        if self._state != "disabled":
            self._set_state("stopped")

    # -- state ---------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._since = now_ms()

    def _enter_degraded(self, reason: str | None) -> None:
        """From now on L1 is neither trusted nor filled (see the module docstring)."""
        cache = self.cache
        if self.apply_l1:
            cache.fill_ok = False
            cache.sync_applies = False
            cache.local.flush_all()
            for engine in cache.engines.values():
                engine.pending.clear()
            self._set_state("degraded")
        if reason is not None:
            self.counters.disconnects += 1
            log.warning(
                "event subscription lost (%s): L1 flushed, cache-first reads go to Redis "
                "until it is restored", reason
            )

    def _enter_connected(self) -> None:
        """Both subscriptions confirmed: events published from now on reach us."""
        cache = self.cache
        if self.apply_l1:
            # Whatever L1 held may have missed events: flush, then trust again.
            # No await between the flush and fill_ok: a fill that began before the
            # flush is fenced out by it.
            cache.local.flush_all()
            for engine in cache.engines.values():
                engine.pending.clear()
            cache.fill_ok = True
            cache.sync_applies = True
            self._set_state("connected")
        if self._ever_connected:
            self.counters.reconnects += 1
            log.warning("event subscription restored; L1 in use again")
        else:
            log.debug("subscribed to events (instance %s)", cache.instance_id)
        self._ever_connected = True
        assert self._ready is not None
        self._ready.set()

    def snapshot(self) -> SyncState:
        """The current :class:`SyncState`."""
        c = self.counters
        state = self._state
        if self._stopped and state != "disabled":
            state = "stopped"
        return SyncState(
            state=state,
            since=self._since,
            last_event_at=self._last_event_at,
            received=c.received,
            applied=c.applied,
            echoes=c.echoes,
            superseded=c.superseded,
            unknown=c.unknown,
            malformed=c.malformed,
            disconnects=c.disconnects,
            reconnects=c.reconnects,
            app_overflow=c.app_overflow,
            app_streams=sum(len(s) for s in self._streams.values()),
        )

    # -- the task ------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF
        while not self._stopped:
            self._live = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                if self._live:
                    self._enter_degraded(reason)
                    backoff = INITIAL_BACKOFF
                else:
                    self._warn("connect", "cannot subscribe to events: %s", reason)
            if self._stopped:
                return
            delay = backoff * (0.5 + random.random() / 2)
            backoff = min(backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect, subscribe, then read until the connection fails (raises)."""
        assert self._pool is not None
        cache = self.cache
        keys = cache.keys
        # redis-py's pool/connection methods are unannotated: go through Any.
        conn: AbstractConnection = cast(Any, self._pool).make_connection()
        parser = getattr(conn, "_parser", None)
        if parser is not None and hasattr(parser, "set_pubsub_push_handler"):
            parser.set_pubsub_push_handler(_push_passthrough)
        loop = asyncio.get_running_loop()
        interval = cache.config.heartbeat_interval
        try:
            await cast(Any, conn).connect()
            await conn.send_command("SUBSCRIBE", keys.EVENTS, check_health=False)
            await conn.send_command("PSUBSCRIBE", keys.account_events_pattern(), check_health=False)
            unconfirmed = 2
            deadline = loop.time() + cache.config.connect_timeout + cache.config.socket_timeout
            read = conn.read_response
            while unconfirmed:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise CalRedisError("no subscription confirmation")
                resp = await read(timeout=timeout, push_request=True, disconnect_on_error=False)
                if resp is None:
                    continue
                if isinstance(resp, list) and resp and resp[0] in (b"subscribe", b"psubscribe"):
                    unconfirmed -= 1
                else:
                    self._on_reply(resp)
            self._enter_connected()
            self._live = True
            # Heartbeat: a PING every `interval`; dead when nothing at all arrived for
            # 2 x interval and the oldest unanswered PING is `interval` old (the
            # second condition keeps a long event-loop stall from looking like a
            # dead connection: no PING was sent during the stall).
            now = loop.time()
            last_rx = now
            next_ping = now + interval
            ping_out: float | None = None
            dead_after = 2 * interval
            on_reply = self._on_reply
            while not self._stopped:
                wake = next_ping if ping_out is None else max(last_rx + dead_after,
                                                              ping_out + interval)
                timeout = wake - now
                resp = await read(
                    timeout=timeout if timeout > 0 else 0,
                    push_request=True,
                    disconnect_on_error=False,
                )
                now = loop.time()
                if resp is not None:
                    last_rx = now
                    ping_out = None
                    on_reply(resp)
                    if now < next_ping:
                        continue
                elif ping_out is not None and now >= wake:
                    # One look at what is already buffered, then it is dead.
                    resp = await read(timeout=0, push_request=True, disconnect_on_error=False)
                    if resp is None:
                        raise CalRedisError(f"no reply to PING within {now - ping_out:.2f} s")
                    now = last_rx = loop.time()
                    ping_out = None
                    on_reply(resp)
                if ping_out is None and now >= next_ping:
                    await conn.send_command("PING", check_health=False)
                    ping_out = now
                    next_ping = now + interval
        finally:
            await conn.disconnect(nowait=True)

    # -- dispatch ------------------------------------------------------------------------
    def _on_reply(self, resp: Any) -> None:
        if isinstance(resp, list) and resp:
            kind = resp[0]
            if kind == b"message" and len(resp) == 3:
                self.on_message(resp[1], resp[2])
            elif kind == b"pmessage" and len(resp) == 4:
                self.on_message(resp[2], resp[3])
            elif kind not in (b"pong", b"subscribe", b"psubscribe"):
                log.debug("unexpected pub/sub frame %r", resp[:2])
        # else: a bare PONG (RESP3) - liveness only

    def on_message(self, channel: bytes | str, data: bytes | str) -> None:
        """Handle one pub/sub message (never raises: problems are counted and logged)."""
        c = self.counters
        c.received += 1
        self._last_event_at = now_ms()
        ch = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        keys = self.cache.keys
        account: str | None = None
        if ch != keys.EVENTS:
            account = keys.account_id_from_channel(ch)
            if account is None:
                c.malformed += 1
                self._warn("channel", "event on unexpected channel %r ignored", ch[:300])
                return
        if len(data) > MAX_EVENT_BYTES:
            c.malformed += 1
            self._warn("size", "event of %d bytes on %r ignored (limit %d)", len(data), ch,
                       MAX_EVENT_BYTES)
            return
        try:
            event = codec.decode_event(data, channel=ch)
        except SerializationError as err:
            c.malformed += 1
            self._warn("json", "malformed event ignored: %s", err)
            return
        if account is not None:
            owner = event.account_id
            if not owner:
                event = msgspec.structs.replace(event, account_id=account)
            elif owner != account:
                c.malformed += 1
                self._warn("tenant", "event %r naming account %r on the channel of %r ignored",
                           event.type, owner, account)
                return
        if self.apply_l1 and not self._apply(event, account, ch):
            return
        streams = self._streams.get(account)
        if streams:
            for stream in list(streams):
                if not stream._offer(event):
                    c.app_overflow += 1
        if self._handlers:
            for handler in list(self._handlers):
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler %r failed", handler)

    def _apply(self, event: Event, account: str | None, channel: str) -> bool:
        """Apply an event to L1; False when it is malformed (not passed on)."""
        c = self.counters
        kind = self.types.get(event.type)
        if kind is None:
            # Application events (publish_account_event) are legitimate: debug only.
            c.unknown += 1
            log.debug("event of unknown type %r not applied to L1", event.type[:100])
            return True
        if kind.scoped != (account is not None):
            c.malformed += 1
            self._warn("scope", "%s event on the wrong channel %r ignored", event.type, channel)
            return False
        try:
            outcome = kind.apply(event, account)
        except (SerializationError, ValidationError) as err:
            c.malformed += 1
            self._warn("data", "malformed %s event ignored: %s", event.type, err)
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

    # -- app subscriptions ---------------------------------------------------------------
    def open_stream(self, account_id: str | None, maxsize: int) -> EventStream:
        stream = EventStream(self, account_id, maxsize)
        self._streams.setdefault(account_id, weakref.WeakSet()).add(stream)
        return stream

    def _unregister(self, stream: EventStream) -> None:
        streams = self._streams.get(stream.account_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[stream.account_id]

    def add_handler(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def remove_handler(self, handler: EventHandler) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(handler)

    # -- own events ----------------------------------------------------------------------
    def apply_own(self, event: Event, account: str | None) -> None:
        """Our own hand-published event: invalidate locally (the echo is skipped)."""
        kind = self.types.get(event.type)
        if kind is None:
            return
        if kind.engine is None:
            kind.apply(msgspec.structs.replace(event, origin=""), account)
        elif kind.action == "Sync":
            kind.engine.l1.invalidate_all()
        else:
            key: Hashable = kind.engine.l1_key(account, event.id)
            kind.engine.l1.invalidate(key)
