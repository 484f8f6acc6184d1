"""The event subscriber: one pub/sub connection per cache, its heartbeat and reconnection.

Every cache-first write publishes an :class:`~cal_redis.models.Event` inside its own
write script, so the order of events on a channel is the order of the writes in
Redis. Each :class:`~cal_redis.CallableCache` owns one pub/sub connection (started by
``connect()``, stopped by ``close()``) that SUBSCRIBEs ``cal:events`` and PSUBSCRIBEs
``cal:account:*:events`` and hands every message to the :class:`~.dispatch.Dispatcher`.

A loss of the connection (or of the subscriptions) degrades the cache until both
subscriptions are confirmed again (see :mod:`.dispatch`). A connection that dies
silently (no FIN, a frozen server) is caught by a heartbeat: a PING every
``config.heartbeat_interval`` seconds, and the connection is declared dead when
nothing at all (event, confirmation or pong) has arrived for ``2 * heartbeat_interval``.
See docs/sync.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import CalRedisError, ClosedError
from ..models import now_ms
from .dispatch import Dispatcher
from .streams import EventStream, Hub

if TYPE_CHECKING:
    from .._context import Context

__all__ = ("Subscriber", "SyncState")

log = logging.getLogger("cal_redis.sync")

#: Reconnection backoff: first delay and cap (seconds), with jitter.
INITIAL_BACKOFF: Final = 0.02
MAX_BACKOFF: Final = 2.0


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
    #: L1 flushes while subscribed (a Redis Cluster failover or slot map change).
    topology_flushes: int = 0
    #: Gaps replayed from the event logs instead of flushing L1
    #: (``CacheConfig(event_log="replay")``), and the events read doing so.
    replays: int = 0
    replayed: int = 0
    #: Scopes (a table's namespace, an account's entries) flushed because their log no
    #: longer covered a gap.
    replay_flushes: int = 0
    #: Events of logged kinds received without a log id while replay was on (each
    #: switches replay off until the cache is restarted).
    unlogged: int = 0
    #: Events dropped because an app subscriber's queue was full.
    app_overflow: int = 0
    #: App subscriptions (:meth:`SyncOps.events`) currently open.
    app_streams: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for ``stats()``)."""
        return asdict(self)


async def _push_passthrough(response: Any) -> Any:
    # redis-py's default handler logs str(response) of every push frame at debug
    # level: a per-event cost (and a few MB for a huge payload) we do not want.
    return response


class Subscriber:
    """The pub/sub connection of one cache and the task that owns it.

    Lifecycle: :meth:`start` (by ``CallableCache.connect``), :meth:`stop` (by
    ``close``). One background task connects, subscribes, reads and dispatches,
    pings, and reconnects with backoff; see the module docstring.
    """

    def __init__(self, ctx: Context, dispatcher: Dispatcher, hub: Hub) -> None:
        self._ctx = ctx
        self.dispatcher = dispatcher
        self.hub = hub
        self._state = "disabled" if not ctx.config.sync else "degraded"
        self._since = now_ms()
        self._last_event_at: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stopped = False
        self._pool: Any = None
        self._ever_connected = False
        self._live = False

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the background task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` ran."""
        return self._stopped

    async def start(self, *, apply_l1: bool, wait: float | None = None) -> bool:
        """Start the task; with ``wait``, wait up to that long for the subscriptions.

        Returns True when subscribed. With ``apply_l1`` the cache's L1 follows the
        events (and is bypassed until the first confirmation).
        """
        self.launch(apply_l1)
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

    def launch(self, apply_l1: bool) -> None:
        """Start the task if it is not running (``apply_l1``: see :meth:`start`)."""
        if self._stopped:
            raise ClosedError("the cache is closed")
        if self._task is not None:
            return
        ctx = self._ctx
        self.dispatcher.apply_l1 = apply_l1
        if apply_l1:
            self._set_state("degraded")
            self.dispatcher.degraded(None)
        self._pool = ctx.remote.pubsub_pool("cal-redis-sync-" + ctx.instance_id[:12])
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"cal-redis-sync-{ctx.instance_id[:8]}")
        if ctx.remote.is_cluster:
            self._watch_task = loop.create_task(
                self._watch_cluster(), name=f"cal-redis-topology-{ctx.instance_id[:8]}"
            )

    async def stop(self) -> None:
        """Stop the task, close the connection and end every app stream (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        watch, self._watch_task = self._watch_task, None
        if watch is not None:
            watch.cancel()
            await asyncio.wait({watch})
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
        self.hub.close()
        self.dispatcher.stopped()
        if self._state != "disabled":
            self._set_state("stopped")

    # -- state ---------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._since = now_ms()

    def _enter_connected(self, replayed: bool = False) -> None:
        """Both subscriptions confirmed: events published from now on reach us."""
        if self.dispatcher.apply_l1:
            self._set_state("connected")
        self.dispatcher.connected(again=self._ever_connected, replayed=replayed)
        self._ever_connected = True
        assert self._ready is not None
        self._ready.set()

    def snapshot(self) -> SyncState:
        """The current :class:`SyncState`."""
        c = self.dispatcher.counters
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
            topology_flushes=c.topology_flushes,
            replays=c.replays,
            replayed=c.replayed,
            replay_flushes=c.replay_flushes,
            unlogged=c.unlogged,
            app_overflow=self.hub.overflow,
            app_streams=self.hub.open_streams,
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
                    self._set_state("degraded")
                    self.dispatcher.degraded(reason)
                    backoff = INITIAL_BACKOFF
                else:
                    self.dispatcher.warn("connect", "cannot subscribe to events: %s", reason)
            if self._stopped:
                return
            delay = backoff * (0.5 + random.random() / 2)
            backoff = min(backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect, subscribe, then read until the connection fails (raises)."""
        assert self._pool is not None
        ctx = self._ctx
        keys = ctx.keys
        # redis-py's pool/connection methods are unannotated: go through Any.
        conn: Any = self._pool.make_connection()
        parser = getattr(conn, "_parser", None)
        if parser is not None and hasattr(parser, "set_pubsub_push_handler"):
            parser.set_pubsub_push_handler(_push_passthrough)
        loop = asyncio.get_running_loop()
        interval = ctx.config.heartbeat_interval
        elog = self.dispatcher.log
        try:
            if elog is not None and elog.marker is None:
                await elog.begin()  # before subscribing: the logs' starting point
            await conn.connect()
            await conn.send_command("SUBSCRIBE", keys.EVENTS, check_health=False)
            await conn.send_command("PSUBSCRIBE", keys.account_events_pattern(), check_health=False)
            unconfirmed = 2
            deadline = loop.time() + ctx.config.connect_timeout + ctx.config.socket_timeout
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
            # After a gap, the events missed are replayed from the logs before any
            # live one is read (those wait in the socket): see sync/log.py.
            replayed = (self._ever_connected and self.dispatcher.replays
                        and await self.dispatcher.replay())
            if replayed:
                # Live events that arrived during the replay: applied before L1 is
                # served again (the gate is still closed, so they only drop).
                while (resp := await read(timeout=0, push_request=True,
                                          disconnect_on_error=False)) is not None:
                    self._on_reply(resp)
            self._enter_connected(replayed)
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

    async def _watch_cluster(self) -> None:
        """On a Redis Cluster, read the slot map every heartbeat interval; after a
        failover (a new epoch) or any change of masters, flush L1: the failover may
        have lost acknowledged writes that L1 still holds, and this instance's
        subscriber may sit on a healthy node that saw nothing of it."""
        remote: Any = self._ctx.remote
        interval = self._ctx.config.heartbeat_interval
        while not self._stopped:
            try:
                reason = await remote.topology_changed()
            except CalRedisError as err:
                log.debug("cluster slot map not read: %s", err)
                reason = None
            if reason is not None and self._state == "connected":
                self.dispatcher.flush(reason)
            await asyncio.sleep(interval)

    # -- replies -------------------------------------------------------------------------
    def _on_reply(self, resp: Any) -> None:
        if isinstance(resp, list) and resp:
            kind = resp[0]
            if kind == b"message" and len(resp) == 3:
                self._last_event_at = now_ms()
                self.dispatcher.on_message(resp[1], resp[2])
            elif kind == b"pmessage" and len(resp) == 4:
                self._last_event_at = now_ms()
                self.dispatcher.on_message(resp[2], resp[3])
            elif kind not in (b"pong", b"subscribe", b"psubscribe"):
                log.debug("unexpected pub/sub frame %r", resp[:2])
        # else: a bare PONG (RESP3) - liveness only

    def open_stream(self, account_id: str | None, maxsize: int) -> EventStream:
        """An app stream (the subscriber is started without L1 if it was not running)."""
        if not self.running:
            self.launch(apply_l1=False)
        return self.hub.open_stream(account_id, maxsize)
