"""CallableCache: the composition root (L1 + L2 + sync) and the public entry point."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import metrics
from ._context import Context
from ._server_info import check_server_version
from .api.account_data import AccountDataOps
from .api.agents import AgentOps
from .api.cache_first import ACCOUNT, DEVICE, PROXY, REGION, USER, CacheFirstOps
from .api.conversations import ConversationOps
from .api.events import SyncOps
from .api.flow_states import FLOW_STATE, FlowStateOps
from .api.invalidation import InvalidationOps
from .api.queues import QueueOps
from .api.sessions import SessionOps
from .api.trunk_ip import TRUNK_IP, TrunkIpOps
from .api.warming import WarmOps, WarmResult
from .api.ws import WsOps
from .config import CacheConfig, configure_logging, resolve_url
from .engine.entities import Entities
from .engine.ttl_keys import TtlKeys
from .errors import CalRedisError, ConfigurationError
from .keys import KeyBuilder
from .layout import check_key_style
from .local import LocalTier
from .remote import Remote, SentinelRemote, open_remote
from .sync import Dispatcher, Hub, Subscriber

if TYPE_CHECKING:
    from .remote import Redis

__all__ = ("CallableCache",)

log = logging.getLogger("cal_redis")

_NAMESPACES = ("regions", "proxies", "accounts", "users", "devices", "trunks_ip", "flow_states")


class CallableCache(
    SyncOps, CacheFirstOps, TrunkIpOps, SessionOps, AgentOps, QueueOps, ConversationOps, WsOps,
    FlowStateOps, AccountDataOps, InvalidationOps, WarmOps,
):
    """Typed async access to the platform's shared data over L1 (in-process) and L2 (Redis).

    Create it with :meth:`connect` (or :meth:`embedded` for a private server) and
    close it with :meth:`close`, or use it as an async context manager::

        async with await CallableCache.connect("redis://localhost:6379") as cache:
            user = await cache.get_user_by_id("u1")
    """

    def __init__(self, remote: Remote, config: CacheConfig) -> None:
        """Use :meth:`connect`; this constructor does no I/O."""
        ctx = Context(
            config=config,
            remote=remote,
            keys=KeyBuilder(cluster=config.cluster_keys),
            local=LocalTier(config, _NAMESPACES),
        )
        self._ctx = ctx
        self._regions = Entities(REGION, ctx)
        self._proxies = Entities(PROXY, ctx)
        self._accounts = Entities(ACCOUNT, ctx)
        self._users = Entities(USER, ctx)
        self._devices = Entities(DEVICE, ctx)
        self._users_l1 = self._users.l1
        self._trunk_ips = TtlKeys(TRUNK_IP, ctx)
        self._flow_states = TtlKeys(FLOW_STATE, ctx)
        self._engines: tuple[Entities[Any] | TtlKeys[Any], ...] = (
            self._regions, self._proxies, self._accounts, self._users, self._devices,
            self._trunk_ips, self._flow_states,
        )
        dispatcher = Dispatcher(
            ctx, hub := Hub(), {e.spec.kind: (e, e.spec.scoped) for e in self._engines}
        )
        # Hold L1 on a loss of the event subscription (instead of flushing it) when a
        # held entry can be used: served stale while Redis cannot be reached.
        dispatcher.hold_on_loss |= config.serves_stale
        self._sync = Subscriber(ctx, dispatcher, hub)
        #: What this cache's metrics are read from (cal_redis.metrics).
        self._metrics = metrics.Sources(config, ctx.local, remote, dispatcher, hub, self._engines)
        self._last_warm: WarmResult | None = None

    # -- what the parts share, read-only for operators and tests ---------------------------
    @property
    def config(self) -> CacheConfig:
        """The configuration this cache was made with."""
        return self._ctx.config

    @property
    def remote(self) -> Remote:
        """L2: the Redis client owner (round trips, errors and retries in ``stats()``)."""
        return self._ctx.remote

    @property
    def local(self) -> LocalTier:
        """L1: the namespaces (``cache.local["users"]``) with their counters."""
        return self._ctx.local

    @property
    def keys(self) -> KeyBuilder:
        """The key builder of this cache's key style."""
        return self._ctx.keys

    @property
    def last_warm(self) -> WarmResult | None:
        """What the warm-up of ``CacheConfig.warm`` at connect did (None: none ran)."""
        return self._last_warm

    @property
    def instance_id(self) -> str:
        """This instance's id (the ``origin`` of its events)."""
        return self._ctx.instance_id

    @classmethod
    async def connect(
        cls, url: str | None = None, *, config: CacheConfig | None = None,
        client: Redis | None = None, **redis_options: Any,
    ) -> CallableCache:
        """Connect to Redis at ``url`` (default: ``$CAL_VALKEY_HOST``) and check it answers.

        ``redis+cluster://host:port[,host:port...]`` (or a server reporting
        ``cluster_enabled:1``) connects to a Redis Cluster, and
        ``redis+sentinel://sentinel:26379[,...]/<service>[/<db>]`` to the primary Redis
        Sentinel names, followed across failovers (docs/deployment.md). The key style
        recorded in Redis is checked against this cache's (see :mod:`cal_redis.layout`).

        ``redis_options`` go to every redis-py connection the cache makes: TLS
        (``ssl=True``, ``ssl_ca_certs=...``, the other ``ssl_*`` options, or an
        ``ssl_context=`` of your own, used as it is),
        ``credential_provider``, ``username``/``password``, ``client_name``, socket
        options... Options that would break the library's guarantees are refused
        (anything that makes redis-py re-send commands, ``decode_responses=True``,
        another ``protocol``), as are those :class:`~cal_redis.config.CacheConfig` owns
        (``max_connections``, the timeouts) and unknown names; see
        docs/configuration.md, "Connection options".

        ``client``: an existing ``redis.asyncio.Redis`` (one server; not a cluster or
        Sentinel client) the cache runs its commands on, through that client's own
        pool, which it neither changes nor closes; the event subscriber gets a
        connection of its own with the same parameters. A client that retries commands
        (a ``Retry`` with retries, ``retry_on_error``) or decodes replies is refused;
        ``client`` excludes ``url`` and ``redis_options``.

        Raises :class:`~cal_redis.errors.ConfigurationError` (before any I/O for the
        URL, the options and the client) when no URL is known, an option or the client
        is refused, the server is older than the library supports (Redis 7.0, Valkey
        8.0; see docs/configuration.md, "Servers"), or the topology or key style does
        not match the server's, and :class:`~cal_redis.errors.ConnectionError` when
        Redis cannot be reached.
        """
        configure_logging()
        config = config or CacheConfig()
        if client is not None:
            if url is not None or redis_options:
                raise ConfigurationError(
                    "client= replaces the URL and the connection options: give either an "
                    f"existing client or a URL with options (got {'a URL' if url else ''}"
                    f"{' and ' if url and redis_options else ''}"
                    f"{', '.join(sorted(redis_options))})"
                )
            remote = await open_remote("", config, client=client)
        else:
            remote = await open_remote(resolve_url(url), config, options=redis_options)
        try:
            check_server_version(await remote.server_info(), remote.safe_url)
            if remote.is_cluster and config.cluster is False:
                raise ConfigurationError(
                    f"{remote.safe_url} is a Redis Cluster but CacheConfig(cluster=False) "
                    "selects the standalone key style, whose write scripts span slots: "
                    "leave cluster unset (it follows the topology) or set cluster=True"
                )
            if config.cluster is None:
                with warnings.catch_warnings():  # a deprecated field warns once, not twice
                    warnings.simplefilter("ignore", DeprecationWarning)
                    config = replace(config, cluster=remote.is_cluster)
            self = cls(remote, config)
            if isinstance(remote, SentinelRemote):
                remote.on_primary_change(self._primary_changed)
            await check_key_style(remote, self._ctx.keys)
        except BaseException:
            await remote.close()
            raise
        try:
            if config.sync:
                await self._sync.start(
                    apply_l1=True, wait=config.connect_timeout + config.socket_timeout
                )
        except BaseException:
            await self._sync.stop()
            await remote.close()
            raise
        metrics.attach(self._metrics)
        log.debug("connected to %s (instance %s)", remote.safe_url, self.instance_id)
        plan = config.warm
        if plan is not None:
            try:
                self._last_warm = await self.warm(
                    plan.namespaces, users=plan.users, devices=plan.devices
                )
            except CalRedisError as err:  # the cache works cold: say so, do not fail
                log.warning("warm-up at connect failed, L1 starts cold: %s", err)
            else:
                log.info("warm-up at connect: %s", self._last_warm.as_dict())
        return self

    @classmethod
    @asynccontextmanager
    async def embedded(cls, *, config: CacheConfig | None = None) -> AsyncIterator[CallableCache]:
        """A private redis-server and a cache on it, both stopped on exit.

        Example::

            async with CallableCache.embedded() as cache:
                await cache.set_user(User(id="u1", email="a@example.com"))
        """
        from .embedded import EmbeddedRedis

        async with EmbeddedRedis() as server:
            cache = await cls.connect(server.url, config=config)
            try:
                yield cache
            finally:
                await cache.close()

    def _primary_changed(self, reason: str) -> None:
        """Another server became the primary (Redis Sentinel): L1 may hold writes the old
        one acknowledged and the new one never got. Flush it now (in-flight fills are
        fenced out); the event subscriber, moved to the new primary, flushes it again
        and keeps it bypassed until it is subscribed there."""
        dropped = self._ctx.local.flush_all()
        log.info("L1 flushed (failover) on instance %s: %d entries; %s",
                 self.instance_id[:12], dropped, reason)

    async def close(self) -> None:
        """Stop the subscriber, flush L1 and close every connection (idempotent).

        From then on every method raises :class:`~cal_redis.errors.ClosedError`.
        """
        if self._ctx.remote.closed and self._sync.stopped:
            return
        metrics.detach(self._metrics)
        try:
            for engine in self._engines:  # refresh-ahead reads in flight: cancelled
                await engine.refresher.close()
            await self._sync.stop()
        finally:
            await self._ctx.remote.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._sync.stopped

    async def __aenter__(self) -> CallableCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def redis_connection(self) -> Redis:
        """The underlying ``redis.asyncio.Redis`` for custom commands (streams, scripts);
        on a Redis Cluster a ``redis.asyncio.RedisCluster`` on the same nodes."""
        self._ctx.remote.check()
        client: Redis = self._ctx.remote.client
        return client

    def stats(self) -> dict[str, Any]:
        """L1 figures per namespace, L2 round trips/errors/retries, single-flight joins,
        values served stale on error, refresh-ahead reads (done, failed) and the sync."""
        engines = self._engines
        return {
            "l1": self.local.stats(),
            "l1_implementation": self.local.implementation,
            "l2": self.remote.stats(),
            "single_flight_joins": sum(e.joins for e in engines),
            "stale_serves": sum(e.stale_serves for e in engines),
            "refreshes": sum(e.refresher.refreshes for e in engines),
            "refresh_errors": sum(e.refresher.errors for e in engines),
            "sync": self._sync.snapshot().as_dict(),
        }

    def __repr__(self) -> str:
        return f"<CallableCache {self.remote.safe_url} instance={self.instance_id[:8]}>"
