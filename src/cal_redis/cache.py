"""CallableCache: the composition root (L1 + L2 + sync) and the public entry point."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from .config import CacheConfig, configure_logging, redact_url, resolve_url
from .events import SyncOps
from .keys import KeyBuilder
from .local import LocalTier
from .ops._engine import Entities
from .ops.account_data import AccountDataOps
from .ops.agents import AgentOps
from .ops.cache_first import ACCOUNT, DEVICE, PROXY, REGION, USER, CacheFirstOps
from .ops.conversations import ConversationOps
from .ops.flow_states import FlowStateOps
from .ops.queues import QueueOps
from .ops.sessions import SessionOps
from .ops.trunk_ip import TrunkIpOps, TrunkIps
from .ops.ws import WsOps
from .remote import Remote
from .sync import Subscriber

__all__ = ("CallableCache",)

log = logging.getLogger("cal_redis")


class CallableCache(
    SyncOps, CacheFirstOps, TrunkIpOps, SessionOps, AgentOps, QueueOps, ConversationOps, WsOps,
    FlowStateOps, AccountDataOps,
):
    """Typed async access to the platform's shared data over L1 (in-process) and L2 (Redis).

    Create it with :meth:`connect` (or :meth:`embedded` for a private server) and
    close it with :meth:`close`, or use it as an async context manager::

        async with await CallableCache.connect("redis://localhost:6379") as cache:
            user = await cache.get_user_by_id("u1")
    """

    def __init__(self, remote: Remote, config: CacheConfig) -> None:
        """Use :meth:`connect`; this constructor does no I/O."""
        self.config = config
        self.remote = remote
        self.keys = KeyBuilder(cluster=config.cluster)
        self.instance_id = uuid.uuid4().hex
        self.local = LocalTier(
            config, ["regions", "proxies", "accounts", "users", "devices", "trunks_ip", "flow_states"]
        )
        #: False while sync is degraded: L1 is neither filled nor trusted.
        self.fill_ok = True
        #: True while events are applied to L1 (pending own writes are tracked then).
        self.sync_applies = False
        self._regions = Entities(REGION, self)
        self._proxies = Entities(PROXY, self)
        self._accounts = Entities(ACCOUNT, self)
        self._users = Entities(USER, self)
        self._devices = Entities(DEVICE, self)
        self._users_l1 = self.local["users"]
        self.engines: dict[str, Entities[Any]] = {
            e.spec.kind: e
            for e in (self._regions, self._proxies, self._accounts, self._users, self._devices)
        }
        self._trunk_ips = TrunkIps(self)
        self._sync = Subscriber(self)
        self._closed = False

    @classmethod
    async def connect(cls, url: str | None = None, *, config: CacheConfig | None = None) -> CallableCache:
        """Connect to Redis at ``url`` (default: ``$CAL_VALKEY_HOST``) and check it answers.

        Raises :class:`~cal_redis.errors.ConfigurationError` when no URL is known and
        :class:`~cal_redis.errors.ConnectionError` when Redis cannot be reached.
        """
        configure_logging()
        config = config or CacheConfig()
        remote = Remote(resolve_url(url), config)
        self = cls(remote, config)
        try:
            await remote.ping()
            if config.sync:
                await self._sync.start(
                    apply_l1=True, wait=config.connect_timeout + config.socket_timeout
                )
        except BaseException:
            await self._sync.stop()
            await remote.close()
            raise
        log.debug("connected to %s (instance %s)", redact_url(remote.url), self.instance_id)
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

    async def close(self) -> None:
        """Stop the subscriber and close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._sync.stop()
        finally:
            await self.remote.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    async def __aenter__(self) -> CallableCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def redis_connection(self) -> aioredis.Redis:
        """The underlying ``redis.asyncio.Redis`` for custom commands (streams, scripts)."""
        return self.remote.client

    def stats(self) -> dict[str, Any]:
        """L1 figures per namespace, L2 round trips/errors/retries, single-flight joins."""
        return {
            "l1": self.local.stats(),
            "l1_implementation": self.local.implementation,
            "l2": self.remote.stats(),
            "single_flight_joins": sum(e.joins for e in self.engines.values()) + self._trunk_ips.joins,
            "sync": self._sync.snapshot().as_dict(),
        }

    def __repr__(self) -> str:
        return f"<CallableCache {redact_url(self.remote.url)} instance={self.instance_id[:8]}>"
