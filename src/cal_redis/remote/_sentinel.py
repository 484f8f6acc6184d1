"""Redis Sentinel: the primary the sentinels name, followed across failovers.

Commands go to the primary through redis-py's ``SentinelConnectionPool`` and
``SentinelManagedConnection``, on the library's own discipline (the waiting pool,
hiredis packing, no redis-py retries, the one error mapping: :func:`own_client` and
:func:`pool_settings`, as for one server). Every new connection asks the sentinels
which server is the primary (``SENTINEL MASTER <service>``; an answer from a sentinel
whose configuration epoch is older than one already seen is skipped): the address is
never cached beyond the connection.

**Following a failover.** Waiting for errors is not enough: after ``SENTINEL FAILOVER``
the old primary stays a primary, accepting writes its successor never gets, until
Sentinel reconfigures it as a replica about ten seconds later. So the cache keeps one
pub/sub connection to every sentinel (only the sentinel leading a failover announces
its steps) and reacts to

- ``+failover-state-send-slaveof-noone`` (the leader is about to promote a replica):
  the promoted replica is taken as the primary at once, before it is promoted, so no
  write goes to the old primary after the promotion; until the failover completes
  new connections go to it without asking the sentinels (which still name the old
  primary); a write that reaches it before its promotion is refused (``READONLY``,
  raised as :class:`~cal_redis.errors.ConnectionError`, never re-sent);
- ``+switch-master`` (the failover is complete; every sentinel announces it);
- ``-failover-abort-*`` (the failover was abandoned): the sentinels are asked again.

Taking a new primary drops every pooled connection to the old one (idle ones at
once, busy ones when they are released), flushes L1 through the hooks the cache
registered (:meth:`SentinelRemote.on_primary_change`) and moves the event subscriber:
its connection is closed with the reason, so the subscriber goes through its loss
path (L1 flushed and bypassed) and subscribes again on the new primary (L1 flushed
once more, then used). A connection to a sentinel that was lost is made again with
backoff, and the primary re-checked once it is subscribed, so an announcement missed
meanwhile is caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff

from .. import errors
from ..config import CacheConfig, redact_url
from . import (
    Remote,
    _WaitingPool,
    close_client,
    map_redis_error,
    own_client,
    pool_settings,
    subscriber_settings,
)
from ._cluster import parse_nodes
from ._options import connection_kwargs

__all__ = (
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_SCHEMES",
    "SentinelRemote",
    "SentinelURL",
    "parse_sentinel_url",
)

log = logging.getLogger("cal_redis.remote")

#: URL schemes that select Redis Sentinel, and the scheme of their data servers.
SENTINEL_SCHEMES: Final = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
#: The port of a sentinel given without one.
DEFAULT_SENTINEL_PORT: Final = 26379
#: Query options of a sentinel URL that are about the sentinels themselves.
_SENTINEL_QUERY: Final = ("sentinel_username", "sentinel_password")

#: What the cache listens to on every sentinel.
SWITCH: Final = b"+switch-master"
PROMOTING: Final = b"+failover-state-send-slaveof-noone"
ABORTED: Final = b"-failover-abort-*"

#: Reconnection backoff to a sentinel: first delay and cap (seconds), with jitter.
INITIAL_BACKOFF: Final = 0.05
MAX_BACKOFF: Final = 2.0


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (see :func:`parse_sentinel_url`)."""

    scheme: str  # of the data servers: "redis" or "rediss"
    userinfo: str  # "user:password@" of the data servers (as written, still quoted) or ""
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    query: str  # "?..." with the data servers' options, or ""
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def node_url(self, host: str, port: int) -> str:
        """The single-server URL of the data server at ``host:port``."""
        where = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{self.userinfo}{where}:{port}/{self.db}{self.query}"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]``.

    The hosts are the sentinels (port 26379 when none is given); ``service`` is the
    name the sentinels monitor the primary under (``sentinel monitor <service> ...``);
    the credentials and ``db`` (default 0) are the data servers'. ``rediss+sentinel://``
    speaks TLS to the data servers and the sentinels. Query options: ``sentinel_username``
    and ``sentinel_password`` (the sentinels' own ``requirepass``/ACL user, when they
    have one), and any option of a single-server URL, for the data servers. Errors are
    :class:`~cal_redis.errors.ConfigurationError` naming the problem.
    """
    safe = redact_url(url)
    what = f"invalid Redis Sentinel URL {safe!r}"
    scheme, sep, rest = url.partition("://")
    base = SENTINEL_SCHEMES.get(scheme.lower()) if sep else None
    if base is None:
        raise errors.ConfigurationError(f"{what}: the scheme must be redis+sentinel or "
                                        "rediss+sentinel")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    sentinels = parse_nodes(hosts, DEFAULT_SENTINEL_PORT, what)
    if not sentinels:
        raise errors.ConfigurationError(f"{what}: no sentinel given (host[:port],...)")
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise errors.ConfigurationError(
            f"{what}: no service name: redis+sentinel://host:26379[,host:26379...]/<service>[/<db>]"
        )
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise errors.ConfigurationError(
            f"{what}: the path must be /<service>[/<db>], the db a number, got /{path}"
        )
    service = unquote(parts[0])
    db = int(parts[1]) if len(parts) == 2 else 0
    pairs = parse_qsl(query, keep_blank_values=True)
    own = {k: v for k, v in pairs if k in _SENTINEL_QUERY}
    data = [(k, v) for k, v in pairs if k not in _SENTINEL_QUERY]
    if any(k == "db" for k, _ in data):
        raise errors.ConfigurationError(f"{what}: give the database in the path (/<service>/<db>)")
    return SentinelURL(
        scheme=base,
        userinfo=userinfo + at,
        sentinels=sentinels,
        service=service,
        db=db,
        query="?" + urlencode(data) if data else "",
        sentinel_username=own.get("sentinel_username") or None,
        sentinel_password=own.get("sentinel_password") or None,
    )


def _where(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class _Sentinels(Sentinel):
    """redis-py's ``Sentinel`` with the discovery the cache needs (module docstring):
    a stale configuration epoch is skipped, a promotion in progress is honoured, the
    error names every sentinel asked."""

    def __init__(self, sentinels: Any, **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call]
        #: The highest configuration epoch a sentinel reported for the service.
        self.epoch = -1
        #: The replica a failover's leader is promoting (until the failover ends).
        self.pending: tuple[str, int] | None = None
        self.pending_until = 0.0
        #: Seconds the sentinels give a failover (their ``failover-timeout``).
        self.failover_timeout = 180.0

    def prefer(self, sentinel: Any) -> None:
        """Ask ``sentinel`` (one of :attr:`sentinels`) first from now on."""
        i = self.sentinels.index(sentinel)
        if i:
            self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        pending = self.pending
        if pending is not None:
            if asyncio.get_running_loop().time() < self.pending_until:
                return pending
            self.pending = None
        failures: list[str] = []
        stale: list[tuple[int, Any, dict[str, Any]]] = []
        unknown = 0
        for sentinel in list(self.sentinels):
            where = _where(sentinel)
            try:
                reply: Any = await sentinel.sentinel_master(service_name)
            except rexc.ResponseError as err:
                unknown += "no such master" in str(err).lower()
                failures.append(f"{where}: {err}")
                continue
            except (rexc.RedisError, OSError) as err:
                failures.append(f"{where}: {err}")
                continue
            state: dict[str, Any] = reply
            epoch = int(state.get("config-epoch", 0))
            if not self.check_master_state(state, service_name):
                failures.append(f"{where}: reports the primary down or unknown")
            elif epoch < self.epoch:
                stale.append((epoch, sentinel, state))
            else:
                return self._found(sentinel, state, epoch)
        if stale and len(stale) == len(self.sentinels):
            # every sentinel answered with an older epoch: the deployment was reset
            epoch, sentinel, state = max(stale, key=lambda item: item[0])
            log.warning("every sentinel of %s reports configuration epoch %d, older than %d "
                        "seen before (sentinels reset?): following them", service_name,
                        epoch, self.epoch)
            return self._found(sentinel, state, epoch)
        failures += [f"{_where(s)}: stale (configuration epoch {e} < {self.epoch})"
                     for e, s, _ in stale]
        message = f"no primary of service {service_name!r} from the sentinels: " + "; ".join(failures)
        if unknown == len(self.sentinels):
            raise errors.ConfigurationError(
                message + " (the service name is the one of `sentinel monitor <service> ...`)"
            )
        raise MasterNotFoundError(message)

    def _found(self, sentinel: Any, state: dict[str, Any], epoch: int) -> tuple[str, int]:
        self.epoch = epoch
        timeout = state.get("failover-timeout")
        if isinstance(timeout, int) and timeout > 0:
            self.failover_timeout = timeout / 1000
        self.prefer(sentinel)  # asked first next time
        return str(state["ip"]), int(state["port"])


class _SentinelPool(_WaitingPool, SentinelConnectionPool):
    """The waiting pool over Sentinel-managed connections: a connection to another
    server than the current primary is dropped when taken or released."""

    def _stale(self, connection: Any) -> bool:
        address = self.master_address
        return (address is not None and connection.is_connected
                and (connection.host, int(connection.port)) != tuple(address))

    async def ensure_connection(self, connection: Any) -> None:
        if self._stale(connection):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def release(self, connection: Any) -> None:
        if self._stale(connection):
            await connection.disconnect()
        await super().release(connection)


class _Movable:
    """A Sentinel-managed pub/sub connection the cache can close with a reason, so
    the subscriber's next read raises that reason."""

    cal_moved: str | None = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self.cal_moved is not None:
            raise errors.ConnectionError(self.cal_moved)
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except Exception as err:
            if self.cal_moved is not None:
                raise errors.ConnectionError(self.cal_moved) from err
            raise


class _MovableConnection(_Movable, SentinelManagedConnection):
    pass


class _MovableSSLConnection(_Movable, SentinelManagedSSLConnection):
    pass


class _SubscriberPool:
    """The event subscriber's pool: each connection goes to the primary the sentinels
    name when it connects; :meth:`move` closes the current one with a reason."""

    def __init__(self, remote: SentinelRemote, client_name: str) -> None:
        settings = subscriber_settings(remote.config, client_name)
        data = {k: v for k, v in remote.data_kwargs.items() if k != "client_name"}
        pool_class: Any = SentinelConnectionPool
        self._pool: Any = pool_class(
            remote.parsed.service, remote.sentinels,
            **{**settings, **data,
               "connection_class": _MovableSSLConnection if remote.tls else _MovableConnection},
        )
        self._made: weakref.WeakSet[Any] = weakref.WeakSet()

    def make_connection(self) -> Any:
        conn = self._pool.make_connection()
        self._made.add(conn)
        return conn

    @property
    def node(self) -> str | None:
        """``host:port`` of the server the subscriber is connected to, if it is."""
        for conn in list(self._made):
            if conn.is_connected and conn.cal_moved is None:
                return f"{conn.host}:{conn.port}"
        return None

    async def move(self, reason: str) -> None:
        """Close every connection made so far; the subscriber reconnects (and raises
        ``reason`` from a read of a closed one)."""
        for conn in list(self._made):
            conn.cal_moved = reason
            if conn.is_connected:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        await self._pool.aclose()


class SentinelRemote(Remote):
    """A :class:`Remote` on the primary that Redis Sentinel names; see the module
    docstring."""

    __slots__ = (
        "_confirmed",
        "_ever_heard",
        "_heard",
        "_hooks",
        "_listeners",
        "_subscribers",
        "data_kwargs",
        "failovers",
        "parsed",
        "primary",
        "sentinels",
        "tls",
    )

    is_sentinel = True

    def __init__(
        self, url: str, config: CacheConfig, *, options: Mapping[str, Any] | None = None
    ) -> None:
        self._setup(url, config, options)
        self.parsed = parse_sentinel_url(url)
        data = connection_kwargs(self.parsed.node_url("localhost", 6379), self.options)
        if "ssl_context" in data:
            raise errors.ConfigurationError(
                "ssl_context= is not supported with Sentinel: the sentinels' own connections "
                "take the ssl_* options (ssl_ca_certs=..., ssl_certfile=...); give those"
            )
        cls = data.pop("connection_class", Connection)
        data.pop("host", None)
        data.pop("port", None)
        #: TLS to the data servers and the sentinels (``rediss+sentinel://`` or ssl=True).
        self.tls = issubclass(cls, SSLConnection)
        #: The data servers' connection arguments (credentials, db, options).
        self.data_kwargs: dict[str, Any] = data
        self.sentinels = _Sentinels(list(self.parsed.sentinels),
                                    sentinel_kwargs=self._sentinel_kwargs())
        pool = _SentinelPool(
            service_name=self.parsed.service, sentinel_manager=self.sentinels,
            **{**pool_settings(config), **data,
               "connection_class": SentinelManagedSSLConnection if self.tls
               else SentinelManagedConnection},
        )
        self.client: aioredis.Redis = own_client(pool)
        self.cmd: Any = self.client
        #: ``(host, port)`` of the primary, as last learned (None before :meth:`open`).
        self.primary: tuple[str, int] | None = None
        #: Changes of primary followed since connect.
        self.failovers = 0
        self._hooks: list[Callable[[str], None]] = []
        self._listeners: list[asyncio.Task[None]] = []
        self._subscribers: weakref.WeakSet[_SubscriberPool] = weakref.WeakSet()
        self._confirmed: asyncio.Event | None = None
        self._heard = 0  # sentinels whose announcements are received now
        self._ever_heard = False

    def _sentinel_kwargs(self) -> dict[str, Any]:
        parsed = self.parsed
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.config.connect_timeout,
            "socket_timeout": self.config.socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
            "decode_responses": False,
        }
        if parsed.sentinel_username:
            kwargs["username"] = parsed.sentinel_username
        if parsed.sentinel_password:
            kwargs["password"] = parsed.sentinel_password
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update({k: v for k, v in self.data_kwargs.items() if k.startswith("ssl_")})
        return kwargs

    @property
    def primary_name(self) -> str:
        """``host:port`` of the primary (``"?"`` before :meth:`open`)."""
        return "?" if self.primary is None else f"{self.primary[0]}:{self.primary[1]}"

    def on_primary_change(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(reason)`` each time another server becomes the primary."""
        self._hooks.append(hook)

    def pubsub_pool(self, client_name: str) -> Any:
        pool = _SubscriberPool(self, client_name)
        self._subscribers.add(pool)
        return pool

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> bool:
        """Ask the sentinels for the primary, start listening to their announcements,
        check the primary answers (and is not a cluster node); False."""
        service = self.parsed.service
        self.round_trips += 1
        try:
            self.primary = await self.sentinels.discover_master(service)
        except (rexc.RedisError, OSError) as err:
            self.errors += 1
            raise map_redis_error(err, f"SENTINEL MASTER {service}") from err
        self._confirmed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._listeners = [
            loop.create_task(self._listen(sentinel), name=f"cal-redis-sentinel-{_where(sentinel)}")
            for sentinel in list(self.sentinels.sentinels)
        ]
        if await super().open():
            raise errors.ConfigurationError(
                f"{self.safe_url}: the primary {self.primary_name} is a Redis Cluster node "
                "(cluster_enabled:1): use a redis+cluster:// URL"
            )
        wait = self.config.connect_timeout + self.config.socket_timeout
        try:
            await asyncio.wait_for(self._confirmed.wait(), wait)
        except asyncio.TimeoutError:
            log.warning("%s: no sentinel's announcements subscribed within %.1f s; a failover "
                        "is followed once one is (retrying in the background)", self.safe_url, wait)
        return False

    async def close(self) -> None:
        self._loop = None
        tasks, self._listeners = self._listeners, []
        for task in tasks:
            # Python < 3.12 can swallow a cancellation racing with a completing
            # wait_for (redis-py's socket writes): cancel until it is done.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        await close_client(self.client)
        for sentinel in list(self.sentinels.sentinels):
            with contextlib.suppress(Exception):
                await sentinel.aclose()

    # -- the announcements ----------------------------------------------------------------------
    async def _listen(self, sentinel: Any) -> None:
        """Subscribe to one sentinel's announcements and react to them, reconnecting
        with backoff; the primary is re-checked each time the subscription is confirmed."""
        where = _where(sentinel)
        backoff = INITIAL_BACKOFF
        listening = False
        while self._loop is not None:
            conn: Any = sentinel.connection_pool.make_connection()
            try:
                await conn.connect()
                await conn.send_command("SUBSCRIBE", SWITCH, PROMOTING)
                await conn.send_command("PSUBSCRIBE", ABORTED)
                await self._confirm(conn, 3)
                backoff = INITIAL_BACKOFF
                assert self._confirmed is not None
                self._confirmed.set()
                self._listening(+1, where, "")
                listening = True
                await self._recheck(f"subscribed to sentinel {where}")
                await self._read(conn, sentinel, where)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
                log.debug("announcements of sentinel %s: %s", where, reason)
                if listening:
                    self._listening(-1, where, reason)
            finally:
                listening = False
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            if self._loop is None:
                return
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _listening(self, change: int, where: str, reason: str) -> None:
        """Count the sentinels whose announcements are received; say when none is
        left (failovers are then followed late) and when one is back."""
        before, self._heard = self._heard, self._heard + change
        if self._loop is None:
            return
        if self._heard == 0 and before > 0:
            log.warning("%s: no sentinel's announcements are received any more (sentinel %s: "
                        "%s); a failover is followed once one is back", self.safe_url, where,
                        reason)
        elif self._heard == 1 and before == 0 and self._ever_heard:
            log.info("%s: announcements of sentinel %s received again", self.safe_url, where)
        self._ever_heard = True

    async def _confirm(self, conn: Any, subscriptions: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.connect_timeout + self.config.socket_timeout
        while subscriptions:
            timeout = deadline - loop.time()
            if timeout <= 0:
                raise errors.TimeoutError("no subscription confirmation from the sentinel")
            resp = await conn.read_response(timeout=timeout, disconnect_on_error=False)
            if isinstance(resp, list) and resp and resp[0] in (b"subscribe", b"psubscribe"):
                subscriptions -= 1

    async def _read(self, conn: Any, sentinel: Any, where: str) -> None:
        """Read announcements until the connection fails; a PING after each silent
        heartbeat interval, and the connection is dead when the next one is silent too."""
        interval = self.config.heartbeat_interval
        pinged = False
        while self._loop is not None:
            resp = await conn.read_response(timeout=interval, disconnect_on_error=False)
            if resp is None:
                if pinged:
                    raise errors.TimeoutError(f"no reply to PING within {interval:g} s")
                await conn.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            await self._announced(resp, sentinel, where)

    async def _announced(self, resp: Any, sentinel: Any, where: str) -> None:
        if not isinstance(resp, list) or not resp:
            return
        if resp[0] == b"message" and len(resp) == 3:
            channel, data = resp[1], resp[2]
        elif resp[0] == b"pmessage" and len(resp) == 4:
            channel, data = resp[2], resp[3]
        else:
            return  # a pong
        words = (data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)).split()
        service = self.parsed.service
        try:
            if channel == SWITCH and len(words) >= 5 and words[0] == service:
                address = (words[3], int(words[4]))
                self.sentinels.prefer(sentinel)  # it knows the new configuration
                await self._switch(address, f"+switch-master from sentinel {where}")
                await self._recheck(f"+switch-master from sentinel {where}")  # learns the epoch
            elif channel == PROMOTING and len(words) >= 6 and words[5] == service:
                await self._switch((words[2], int(words[3])),
                                   f"the sentinel {where} is promoting it", pending=True)
            elif channel.startswith(b"-failover-abort") and len(words) >= 2 \
                    and words[1] == service and self.sentinels.pending is not None:
                self.sentinels.pending = None
                await self._recheck(f"{channel.decode()} from sentinel {where}")
        except ValueError:
            log.debug("unexpected announcement %r on %r from %s", data, channel, where)

    async def _recheck(self, reason: str) -> None:
        """Ask the sentinels for the primary; follow it if it is another server."""
        try:
            address = await self.sentinels.discover_master(self.parsed.service)
        except (errors.CalRedisError, rexc.RedisError, OSError) as err:
            log.debug("primary of %s not re-checked (%s): %s", self.parsed.service, reason, err)
            return
        if address != self.primary:
            await self._switch(address, f"the sentinels name it ({reason})")

    async def _switch(self, address: tuple[str, int], reason: str, *, pending: bool = False) -> None:
        """Take ``address`` as the primary (see the module docstring)."""
        manager = self.sentinels
        if pending:
            manager.pending = address
            manager.pending_until = asyncio.get_running_loop().time() + manager.failover_timeout
        elif manager.pending is not None:
            manager.pending = None
        if address == self.primary or self._loop is None:
            return
        old, self.primary = self.primary_name, address
        self.failovers += 1
        service = self.parsed.service
        why = f"the primary of {service} moved from {old} to {self.primary_name} ({reason})"
        pool: Any = self.client.connection_pool
        pool.master_address = address  # from now on no connection to another is used
        for hook in list(self._hooks):  # no await since the primary changed
            hook(why)
        with contextlib.suppress(Exception):
            await pool.disconnect(inuse_connections=False)
        for subscriber in list(self._subscribers):
            await subscriber.move(why)
        log.warning("%s: connections to %s dropped, L1 flushed, event subscription moved",
                    why, old)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["failovers"] = self.failovers
        return out
