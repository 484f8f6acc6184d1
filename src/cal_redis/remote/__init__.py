"""L2: the only code that calls redis-py — pool, reads, writes, scripts, counters,
retries and error mapping.

redis-py's own retry is switched off: it would also retry non-idempotent writes (a
``ZPOPMIN`` retried after a lost reply pops twice). :meth:`Remote.read` retries
connection errors of idempotent reads with exponential backoff; :meth:`Remote.write`
and :meth:`Remote.script` never retry. Every failure leaves here as a
:class:`~cal_redis.errors.CalRedisError` with the redis-py exception chained.

A :class:`Remote` is bound to the event loop it was created on and refuses I/O after
:meth:`Remote.close` (:class:`~cal_redis.errors.ClosedError`) and from any other loop:
a closed cache never reconnects silently, and a pool is never shared across loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import errors
from .._server_info import describe_server
from ..config import CacheConfig, redact_url
from ._bulk import raw_command, raw_pipeline, scan_entries, scan_keys
from ._options import check_client, check_options, client_url, connection_kwargs
from ._packing import hiredis_available, hiredis_packing
from ._sends import unblocked_sends

if TYPE_CHECKING:
    from ..metrics import Observer

__all__ = (
    "ClusterRemote",
    "SentinelRemote",
    "HMGET_CHUNK",
    "open_remote",
    "REDIS_PY_VERSION",
    "hiredis_packs_commands",
    "Redis",
    "Remote",
    "Script",
    "hiredis_available",
    "hiredis_packing",
    "map_redis_error",
    "raw_command",
    "raw_pipeline",
    "scan_entries",
    "scan_keys",
)

log = logging.getLogger("cal_redis.remote")
T = TypeVar("T")

#: Ids per HMGET of a batch: larger batches are sent as several HMGETs pipelined in
#: one round trip, so one huge batch never holds the connection's other commands
#: for long (a 100k-id HMGET keeps the server busy ~50 ms).
HMGET_CHUNK = 1000

#: The version of redis-py in use.
REDIS_PY_VERSION: str = getattr(redis, "__version__", "unknown")


def hiredis_packs_commands() -> bool:
    """True when this library's connections pack commands with hiredis."""
    from redis.asyncio.connection import Connection

    return hiredis_packing(Connection) is not Connection


#: The client class :meth:`~cal_redis.CallableCache.redis_connection` returns.
Redis = aioredis.Redis

#: Errors after which an idempotent read may be retried.
_RETRYABLE = (rexc.ConnectionError, rexc.TimeoutError, OSError)


def map_redis_error(err: BaseException, what: str) -> errors.CalRedisError:
    """The cal-redis exception for a redis-py / socket exception (the one mapping)."""
    if isinstance(err, errors.CalRedisError):
        return err
    if isinstance(err, rexc.TimeoutError | asyncio.TimeoutError | TimeoutError):
        return errors.TimeoutError(f"{what}: Redis timed out: {err}")
    if isinstance(err, rexc.ConnectionError | OSError):
        return errors.ConnectionError(f"{what}: cannot reach Redis: {err}")
    if isinstance(err, rexc.AskError):  # MovedError too: redis-py drops the word
        word = "MOVED" if isinstance(err, rexc.MovedError) else "ASK"
        return errors.CalRedisError(
            f"{what}: Redis error: {word} {err} (a Redis Cluster node: connect with a "
            "redis+cluster:// URL or CacheConfig(topology='cluster'))"
        )
    if isinstance(err, rexc.ClusterDownError | rexc.TryAgainError):
        return errors.ConnectionError(f"{what}: the Redis Cluster cannot serve it now: {err}")
    return errors.CalRedisError(f"{what}: Redis error: {err}")


class Script:
    """A Lua script: its name, text and SHA1 (run by :meth:`Remote.script`)."""

    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str, text: str) -> None:
        import hashlib

        self.name = name
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue on a pipeline of :meth:`Remote.pipeline` (as EVAL: a pipeline cannot
        recover from a NOSCRIPT)."""
        pipe.eval(self.text, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


class _WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool, but a caller past ``max_connections`` waits for a released
    connection (up to ``pool_timeout`` s) instead of failing with "Too many connections".

    The common case (a connection is free, or one more may be made) takes redis-py's own
    path unchanged; only a full pool waits, woken one caller per release.
    """

    def __init__(self, *args: Any, pool_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_timeout = pool_timeout
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self.can_get_connection():
            await self._wait()
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pool_timeout
        while not self.can_get_connection():
            if self._closing:
                raise errors.ClosedError("the cache is closed")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.TimeoutError(
                    f"no free Redis connection within {self.pool_timeout:g} s: all "
                    f"{self.max_connections} of the pool are busy (CacheConfig.max_connections"
                    ", pool_timeout)"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def wake_all(self) -> None:
        """Wake every waiting caller (the pool is closing: they raise ClosedError)."""
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


def pool_settings(config: CacheConfig) -> dict[str, Any]:
    """The library's pool discipline, from ``config``: the waiting pool's size and wait,
    the timeouts and protocol, no redis-py retries, replies as bytes."""
    return {
        "pool_timeout": config.pool_timeout,
        "max_connections": config.max_connections,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        "protocol": config.protocol,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }


def own_client(pool: aioredis.ConnectionPool) -> aioredis.Redis:
    """A client over a pool the library made: hiredis packing and unblocked sends on
    its connections (set before any is made); ``aclose()`` closes the pool too."""
    pool.connection_class = unblocked_sends(hiredis_packing(pool.connection_class))
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as from_url does: aclose() closes it
    return client


def node_client(
    url: str, config: CacheConfig, options: Mapping[str, Any] | None = None
) -> aioredis.Redis:
    """A client of one server: the waiting pool, hiredis packing, no redis-py retries;
    ``options``: the checked keyword options of ``connect()``."""
    kwargs = connection_kwargs(url, options)
    try:
        pool = _WaitingPool(**{**pool_settings(config), **kwargs})
    except ValueError as err:
        raise errors.ConfigurationError(f"invalid Redis URL {redact_url(url)!r}: {err}") from err
    return own_client(pool)


async def close_client(client: aioredis.Redis) -> None:
    """Wake the callers waiting for a connection (they raise ClosedError), then close."""
    pool = client.connection_pool
    if isinstance(pool, _WaitingPool):
        pool.wake_all()
    await client.aclose()


def subscriber_settings(config: CacheConfig, client_name: str) -> dict[str, Any]:
    """The settings of a pub/sub connection (timeouts, protocol, no retries, bytes)."""
    return {
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": config.socket_timeout,
        "protocol": config.protocol,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "client_name": client_name,
    }


def subscriber_pool(
    url: str, config: CacheConfig, client_name: str, options: Mapping[str, Any] | None = None
) -> Any:
    """A plain pool for pub/sub connections to the server at ``url`` (named
    ``client_name``, whatever ``options`` say)."""
    extra = {k: v for k, v in (options or {}).items() if k != "client_name"}
    kwargs = connection_kwargs(url, extra)
    try:
        return aioredis.ConnectionPool(**{**subscriber_settings(config, client_name), **kwargs})
    except ValueError as err:
        raise errors.ConfigurationError(f"invalid Redis URL {redact_url(url)!r}: {err}") from err


def borrowed_subscriber_pool(client: aioredis.Redis, config: CacheConfig, client_name: str) -> Any:
    """A pool of its own for the pub/sub connection beside an application's client:
    that client's connection class and parameters, named ``client_name``, no retries."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k not in ("retry", "retry_on_error", "retry_on_timeout", "client_name")}
    return aioredis.ConnectionPool(
        connection_class=pool.connection_class,
        **{**kwargs, "retry": Retry(NoBackoff(), 0), "client_name": client_name},
    )


class Remote:
    """One redis.asyncio client (pool) plus counters; see the module docstring."""

    __slots__ = (
        "_loop",
        "borrowed",
        "client",
        "cmd",
        "config",
        "errors",
        "observer",
        "options",
        "reads",
        "retries",
        "round_trips",
        "safe_url",
        "url",
    )

    def __init__(
        self, url: str, config: CacheConfig, *, options: Mapping[str, Any] | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        """``options``: keyword options for every connection (checked by
        :func:`open_remote`); ``client``: an application's client to run the commands
        on, instead of a pool of the cache's own (``url`` then only names it)."""
        self._setup(url, config, options)
        #: True when :attr:`client` is the application's (``connect(client=...)``): the
        #: cache neither changes its pool nor closes it.
        self.borrowed = client is not None
        self.client: aioredis.Redis = (
            client if client is not None else node_client(url, config, self.options)
        )
        #: The client, untyped: replies are bytes (``decode_responses=False``), which
        #: redis-py's annotations cannot express, so callers annotate each reply.
        self.cmd: Any = self.client

    def _setup(self, url: str, config: CacheConfig, options: Mapping[str, Any] | None) -> None:
        """What every kind of remote starts with: its URL, config, options, counters."""
        self.url = url
        #: The URL with any password replaced by ``***`` (for repr, logs, doctor).
        self.safe_url = redact_url(url)
        self.config = config
        #: The keyword options of ``connect()`` every connection gets.
        self.options: dict[str, Any] = dict(options or {})
        self.borrowed = False
        self.round_trips = 0
        self.reads = 0
        self.errors = 0
        self.retries = 0
        #: Told of every read and write and its duration (set only while metrics are
        #: recorded: :mod:`cal_redis.metrics`).
        self.observer: Observer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    #: True for :class:`~._cluster.ClusterRemote`.
    is_cluster = False
    #: True for :class:`~._sentinel.SentinelRemote`.
    is_sentinel = False

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind to the running event loop (done once by ``CallableCache.connect``)."""
        self._loop = asyncio.get_running_loop()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._loop is None

    def _refuse(self) -> errors.CalRedisError:
        if self._loop is None:
            return errors.ClosedError("the cache is closed")
        return errors.CalRedisError(
            "this cache belongs to another event loop: create one cache per event loop "
            "(CallableCache.connect inside the loop that uses it)"
        )

    def check(self) -> None:
        """Raise unless I/O is allowed here: not closed, and on the cache's own loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop or loop is None:
            raise self._refuse()

    async def close(self) -> None:
        """Refuse further I/O and close the pool (idempotent); an application's client
        (``borrowed``) is left open."""
        self._loop = None
        if not self.borrowed:
            await close_client(self.client)

    # -- commands ----------------------------------------------------------------------------
    async def read(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an idempotent read ``fn(*args)``, retrying connection errors with backoff."""
        if asyncio.get_running_loop() is not self._loop:
            raise self._refuse()
        self.round_trips += 1
        self.reads += 1
        start = time.perf_counter() if self.observer is not None else 0.0
        ok = False
        try:
            result = await fn(*args)
            ok = True
            return result
        except _RETRYABLE as err:
            result = await self._retry(what, err, fn, args)
            ok = True
            return result
        except rexc.RedisError as err:
            self.errors += 1
            raise map_redis_error(err, what) from err
        finally:
            if start:
                self._observed(what, fn, args, start, ok)

    async def _retry(
        self, what: str, first: BaseException, fn: Callable[..., Awaitable[T]], args: Sequence[Any]
    ) -> T:
        err: BaseException = first
        for attempt in range(self.config.read_retries):
            await asyncio.sleep(self.config.retry_backoff * (2**attempt))
            if self._loop is None:
                raise errors.ClosedError("the cache is closed") from err
            self.retries += 1
            self.round_trips += 1
            self.reads += 1
            try:
                return await fn(*args)
            except _RETRYABLE as again:
                err = again
            except rexc.RedisError as again:
                self.errors += 1
                raise map_redis_error(again, what) from again
        self.errors += 1
        raise map_redis_error(err, what) from err

    async def write(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a write ``fn(*args)`` once; errors are mapped, never retried."""
        if asyncio.get_running_loop() is not self._loop:
            raise self._refuse()
        self.round_trips += 1
        start = time.perf_counter() if self.observer is not None else 0.0
        ok = False
        try:
            result = await fn(*args)
            ok = True
            return result
        except (rexc.RedisError, OSError) as err:
            self.errors += 1
            raise map_redis_error(err, what) from err
        finally:
            if start:
                self._observed(what, fn, args, start, ok)

    def _observed(
        self, what: str, fn: Callable[..., object], args: Sequence[Any], start: float, ok: bool
    ) -> None:
        # In a finally clause: when not ok, sys.exc_info() is the exception leaving.
        observer = self.observer
        if observer is not None:
            observer.l2_done(what, fn, args, start, None if ok else sys.exc_info()[1])

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.cmd.evalsha(script.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:  # nothing ran: EVAL loads and runs it
            return await self.cmd.eval(script.text, len(keys), *keys, *args)

    async def script(
        self, what: str, script: Script, keys: Sequence[str], args: Sequence[Any],
        *, read: bool = False,
    ) -> Any:
        """Run a Lua script in one round trip (EVALSHA; EVAL on a cold script cache).

        ``read=True`` marks a read-only script: connection errors are then retried.
        """
        if read:
            return await self.read(what, self._evalsha, script, keys, args)
        return await self.write(what, self._evalsha, script, keys, args)

    async def _pipeline(self, build: Callable[[Any], object], transaction: bool) -> list[Any]:
        async with self.client.pipeline(transaction=transaction) as pipe:
            build(pipe)
            replies: list[Any] = await pipe.execute()
            return replies

    async def multi(
        self, what: str, build: Callable[[Any], object], *, read: bool = False
    ) -> list[Any]:
        """Queue commands with ``build(pipe)`` (a redis-py pipeline, untyped: replies are
        bytes) and run them in one MULTI/EXEC round trip.

        ``read=True`` marks it idempotent: connection errors are then retried.
        """
        if read:
            return await self.read(what, self._pipeline, build, True)
        return await self.write(what, self._pipeline, build, True)

    async def pipeline(
        self, what: str, build: Callable[[Any], object], *, read: bool = False
    ) -> list[Any]:
        """Like :meth:`multi` without MULTI/EXEC: one round trip, not atomic."""
        if read:
            return await self.read(what, self._pipeline, build, False)
        return await self.write(what, self._pipeline, build, False)

    async def hmget(self, what: str, key: str, fields: Sequence[Any]) -> list[bytes | None]:
        """HMGET of any number of fields in one round trip, chunked by :data:`HMGET_CHUNK`."""
        if self.observer is not None:
            self.observer.batch(len(fields))
        if len(fields) <= HMGET_CHUNK:
            return await self.read(what, self.cmd.hmget, key, fields)

        def build(pipe: Any) -> None:
            for i in range(0, len(fields), HMGET_CHUNK):
                pipe.hmget(key, fields[i : i + HMGET_CHUNK])

        chunks = await self.pipeline(what, build, read=True)
        out: list[bytes | None] = []
        for chunk in chunks:
            out += chunk
        return out

    async def blocking(self, what: str, wait: float, *command: Any) -> Any:
        """Send one blocking command (``BZPOPMIN``...) that waits up to ``wait`` seconds on
        the server; never retried. The reply is awaited ``wait + socket_timeout``; then the
        connection is dropped and :class:`~cal_redis.errors.TimeoutError` raised.
        Cancelling the caller drops the connection too (no late reply is read by anyone).
        """
        pool: Any = self.pool_for(command[1])
        deadline = wait + self.config.socket_timeout

        async def call() -> Any:
            conn = await pool.get_connection()
            try:
                await conn.send_command(*command)
                # math.inf: no socket timeout on this read; wait_for bounds it, and
                # cancelling the read disconnects the connection.
                return await asyncio.wait_for(conn.read_response(timeout=math.inf), deadline)
            except asyncio.TimeoutError as err:
                await conn.disconnect()
                raise map_redis_error(err, what) from err
            finally:
                await pool.release(conn)

        return await self.write(what, call)

    def pool_for(self, key: str) -> Any:
        """The connection pool of the server holding ``key``."""
        return self.client.connection_pool

    def pubsub_pool(self, client_name: str) -> Any:
        """A pool of its own for the event subscriber, which makes its connections with
        ``make_connection()`` and closes the pool when it stops."""
        if self.borrowed:
            return borrowed_subscriber_pool(self.client, self.config, client_name)
        return subscriber_pool(self.url, self.config, client_name, self.options)

    async def open(self) -> bool:
        """The first contact: True when the server is a Redis Cluster node
        (``cluster_enabled:1``), which :func:`open_remote` then reaches as a cluster."""
        try:
            info: dict[str, Any] = await self.read("INFO cluster", self.cmd.info, "cluster")
        except errors.ConnectionError:
            raise
        except errors.CalRedisError:  # a proxy without INFO: it answers, as one server
            await self.ping()
            return False
        return str(info.get("cluster_enabled", 0)) == "1"

    async def scan_keys(self, match: str, count: int = 1000) -> AsyncIterator[str]:
        """Every key matching the glob ``match`` (SCAN in pages of ``count``; a key may
        come twice, as SCAN guarantees no more)."""
        async for key in self._scan(self.cmd, match, count):
            yield key

    async def _scan(self, client: Any, match: str, count: int) -> AsyncIterator[str]:
        cursor = 0
        while True:
            cursor, page = await self.read("SCAN " + match, client.scan, cursor, match, count)
            for key in page:
                yield key.decode() if isinstance(key, bytes) else key
            if int(cursor) == 0:
                return

    # -- small helpers ------------------------------------------------------------------------
    async def ping(self) -> bool:
        """PING the server (raises a mapped error when unreachable)."""
        return bool(await self.read("PING", self.cmd.ping))

    async def server_info(self) -> dict[str, Any]:
        """The server section of ``INFO``."""
        info: dict[str, Any] = await self.read("INFO", self.cmd.info, "server")
        return info

    async def server_version(self) -> str:
        """The server's name and version, e.g. ``"redis 7.0.15"``, ``"valkey 9.0.1"``."""
        return describe_server(await self.server_info())

    def stats(self) -> dict[str, int]:
        """Round trips (reads and writes), reads, errors and retries so far."""
        return {"round_trips": self.round_trips, "reads": self.reads, "errors": self.errors,
                "retries": self.retries}


async def open_remote(
    url: str, config: CacheConfig, *, options: Mapping[str, Any] | None = None,
    client: aioredis.Redis | None = None,
) -> Remote:
    """The :class:`Remote` for ``url``, bound to the running loop and contacted once.

    The topology is :attr:`CacheConfig.topology`; ``"auto"`` means a cluster for a
    ``redis+cluster://`` URL or a server reporting ``cluster_enabled:1``, Sentinel for
    a ``redis+sentinel://`` URL. A cluster node reached as one server, or a URL of
    another topology than the configured one, is a
    :class:`~cal_redis.errors.ConfigurationError`.

    ``options`` (keyword options for every connection) and ``client`` (an application's
    ``redis.asyncio.Redis`` to use instead of a pool of the cache's own; ``url`` is then
    ignored) are checked before any I/O (:mod:`._options`).
    """
    checked = check_options(options or {}, config)
    if client is not None:
        check_client(client, config)
        if config.topology in ("cluster", "sentinel"):
            raise errors.ConfigurationError(
                f"client= is one server's client, but CacheConfig(topology={config.topology!r})"
            )
        url = client_url(client)
    scheme = url.partition("://")[0].lower()
    safe = redact_url(url)
    if scheme in CLUSTER_SCHEMES and config.topology in ("standalone", "sentinel"):
        raise errors.ConfigurationError(
            f"{safe} is a Redis Cluster URL but CacheConfig(topology={config.topology!r})"
        )
    if scheme in SENTINEL_SCHEMES and config.topology in ("standalone", "cluster"):
        raise errors.ConfigurationError(
            f"{safe} is a Redis Sentinel URL but CacheConfig(topology={config.topology!r})"
        )
    if config.topology == "sentinel" and scheme not in SENTINEL_SCHEMES:
        raise errors.ConfigurationError(
            f"CacheConfig(topology='sentinel') needs a redis+sentinel:// URL, got {safe}"
        )
    remote: Remote
    if client is not None:
        remote = Remote(url, config, client=client)
    elif scheme in SENTINEL_SCHEMES:
        remote = SentinelRemote(url, config, options=checked)
    elif scheme in CLUSTER_SCHEMES or config.topology == "cluster":
        remote = ClusterRemote(url, config, options=checked)
    else:
        remote = Remote(url, config, options=checked)
    remote.bind()
    try:
        is_cluster = await remote.open()
    except BaseException:
        await remote.close()
        raise
    if remote.is_cluster or not is_cluster:
        return remote
    await remote.close()
    if client is not None:
        raise errors.ConfigurationError(
            f"client= reaches a Redis Cluster node ({safe}, cluster_enabled:1): connect "
            "with a redis+cluster:// URL (connection options as keyword arguments)"
        )
    if config.topology == "standalone":
        raise errors.ConfigurationError(
            f"{safe} is a Redis Cluster node (cluster_enabled:1), but "
            "CacheConfig(topology='standalone'): a single-node client would get MOVED "
            "and CROSSSLOT errors; use topology='auto' or 'cluster' (or a redis+cluster:// URL)"
        )
    log.debug("%s reports cluster_enabled:1: reaching it as a Redis Cluster", safe)
    return await open_remote(url, replace(config, topology="cluster"), options=checked)


from ._cluster import CLUSTER_SCHEMES, ClusterRemote  # noqa: E402  (it builds on Remote)
from ._sentinel import SENTINEL_SCHEMES, SentinelRemote  # noqa: E402  (it builds on Remote)
