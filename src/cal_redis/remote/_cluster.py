"""Redis Cluster: the slot map, one waiting pool per node, routing and redirections.

Every command goes to the master of its key's slot through a plain client of that
node, built exactly as the client of a single server (the waiting pool, hiredis
packing, no redis-py retries, the one error mapping), so a routed command costs what
it costs on one server. redis-py's ``RedisCluster`` is kept for
:meth:`~cal_redis.CallableCache.redis_connection` only: its pipelines run each
command through a thread, refuse ``EVALSHA``/``PUBLISH``, and its own retries would
re-send writes.

**Re-sends.** A command is sent again only when the cluster provably did not run it:
a ``MOVED`` or ``ASK`` redirection (refused before execution), ``TRYAGAIN`` and
``CLUSTERDOWN`` (refused before execution), and a connection that could not be made
(nothing was sent). These are re-sent with backoff and a fresh slot map for up to
``CacheConfig.cluster_retry_timeout`` seconds. Any other connection error is raised
as on a single server: :meth:`Remote.read` retries it for reads, writes never.

**Pipelines.** The commands of :meth:`Remote.pipeline` are grouped per node, each
group sent as one pipeline, all groups at once: one round trip per node involved. A
:meth:`Remote.multi` transaction must keep its keys in one slot (the cluster key
style does); it runs on that slot's master.

**Topology.** The slot map comes from ``CLUSTER SLOTS`` of any answering node
(refreshed on a redirection or a dead node, and by the subscriber's watch each
heartbeat); ``cluster_current_epoch`` of ``CLUSTER INFO`` tells the watch that a
failover happened (see :meth:`ClusterRemote.topology_changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.crc import key_slot

from .. import errors
from ..config import CacheConfig, redact_url
from ..engine.single_flight import SingleFlight
from . import Remote, close_client, map_redis_error, node_client, subscriber_pool
from ._options import connection_kwargs

__all__ = ("CLUSTER_SCHEMES", "ClusterRemote", "ClusterURL", "parse_cluster_url", "parse_nodes")

SLOTS: Final = 16384
#: Redirections followed for one command before its error is raised.
MAX_REDIRECTS: Final = 5
#: URL schemes that select the cluster topology.
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES: Final = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed cluster URL: the seed nodes and what every node's URL shares."""

    scheme: str  # "redis" or "rediss"
    userinfo: str  # "user:password@" (as written, still quoted) or ""
    seeds: tuple[tuple[str, int], ...]
    query: str  # "?..." or ""

    def node_url(self, host: str, port: int) -> str:
        """The single-server URL of one node (database 0)."""
        where = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{self.userinfo}{where}:{port}/0{self.query}"


def parse_nodes(hosts: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host[:port][,host[:port]...]`` (IPv6 hosts in brackets) as (host, port) pairs;
    a bad entry is a :class:`~cal_redis.errors.ConfigurationError` starting with ``what``."""
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise errors.ConfigurationError(f"{what}: bad port in {item!r}") from None
        if not host or not 0 < port < 65536:
            raise errors.ConfigurationError(f"{what}: bad node {item!r}")
        nodes.append((unquote(host), port))
    return tuple(nodes)


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[user[:password]@]host:port[,host:port...][/0][?options]``
    (``rediss+cluster://`` for TLS; a plain ``redis://`` URL gives one seed).

    Options are those of a single-server URL and apply to every node. A cluster has
    only database 0: another database is a :class:`~cal_redis.errors.ConfigurationError`.
    """
    safe = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise errors.ConfigurationError(f"invalid Redis Cluster URL {safe!r}: no scheme")
    base = CLUSTER_SCHEMES.get(scheme) or (scheme if scheme in _PLAIN_SCHEMES else None)
    if base is None:
        raise errors.ConfigurationError(
            f"invalid Redis Cluster URL {safe!r}: scheme must be redis+cluster, "
            "rediss+cluster, redis or rediss"
        )
    rest, qsep, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise errors.ConfigurationError(
            f"invalid Redis Cluster URL {safe!r}: a cluster has only database 0, got /{path}"
        )
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = parse_nodes(hosts, 6379, f"invalid Redis Cluster URL {safe!r}")
    if not seeds:
        raise errors.ConfigurationError(f"invalid Redis Cluster URL {safe!r}: no node given")
    return ClusterURL(base, userinfo + at, seeds, qsep + query)


def connect_failed(err: BaseException) -> bool:
    """True when ``err`` is redis-py failing to *make* a connection: nothing was sent."""
    if not isinstance(err, rexc.ConnectionError | rexc.TimeoutError):
        return False
    text = str(err)
    return "connecting to" in text or text == "Timeout connecting to server"


def _name(host: str, port: int) -> str:
    return f"{host}:{port}"


def _slot(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Topology:
    """One reading of the cluster: the master of every slot, the nodes, the epoch."""

    slots: tuple[str, ...]  # node name of each slot's master, "" when unassigned
    masters: tuple[str, ...]
    nodes: tuple[str, ...]  # masters then replicas
    epoch: int


def _topology(reply: Any, info: Any, asked: tuple[str, int]) -> Topology:
    slots = [""] * SLOTS
    masters: list[str] = []
    nodes: list[str] = []
    for entry in reply:
        start, end, master, *replicas = entry
        names = []
        for node in (master, *replicas):
            host = _text(node[0])
            if host in ("", "?"):  # the node does not know its own address
                host = asked[0]
            names.append(_name(host, int(node[1])))
        for i in range(int(start), int(end) + 1):
            slots[i] = names[0]
        if names[0] not in masters:
            masters.append(names[0])
        nodes += names
    epoch = 0
    for line in _text(info).splitlines():
        field, _, value = line.partition(":")
        if field == "cluster_current_epoch":
            epoch = int(value)
    ordered = masters + [n for n in dict.fromkeys(nodes) if n not in masters]
    return Topology(tuple(slots), tuple(masters), tuple(ordered), epoch)


def _route_first(args: Sequence[Any]) -> Any:
    return args[0] if args else None


def _route_eval(args: Sequence[Any]) -> Any:
    return args[2] if len(args) > 2 and int(args[1]) > 0 else None


def _route_none(args: Sequence[Any]) -> Any:
    return None


#: Where a command's routing key is (default: the first argument). PUBLISH goes to
#: the channel's slot: an account channel's events then all leave from the node
#: that runs that account's write scripts, so a subscriber gets them in order.
_ROUTES: Final[dict[str, Callable[[Sequence[Any]], Any]]] = {
    "eval": _route_eval,
    "evalsha": _route_eval,
    "ping": _route_none,
    "info": _route_none,
    "script_load": _route_none,
}


def routing_key(name: str, args: Sequence[Any]) -> Any:
    """The key a command named ``name`` (a redis-py method) is routed by, or None."""
    return _ROUTES.get(name, _route_first)(args)


class _Router:
    """``remote.cmd`` of a cluster: ``cmd.hget(key, field)`` runs on the key's master."""

    def __init__(self, remote: ClusterRemote) -> None:
        self._remote = remote

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        route = _ROUTES.get(name, _route_first)
        execute = self._remote.execute

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await execute(name, route(args), args, kwargs)

        call.__name__ = name
        self.__dict__[name] = call  # later lookups skip __getattr__
        return call


class _Recorder:
    """Stands in for a pipeline while ``build(pipe)`` queues commands."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., _Recorder]:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> _Recorder:
            self.commands.append((name, args, kwargs))
            return self

        return record


_NOT_RUN = (rexc.TryAgainError, rexc.ClusterDownError)


class _SubscriberPools:
    """The subscriber's pool on a cluster: each new connection goes to the next node
    of the slot map (starting at a random one), so after a failure it moves on."""

    def __init__(self, remote: ClusterRemote, client_name: str) -> None:
        self._remote = remote
        self._client_name = client_name
        self._pools: dict[str, Any] = {}
        self._turn = random.randrange(1 << 16)
        #: The node the last connection was made to.
        self.node: str | None = None

    def make_connection(self) -> Any:
        nodes = self._remote.topology.nodes or self._remote.seed_names
        self._turn += 1
        name = nodes[self._turn % len(nodes)]
        pool = self._pools.get(name)
        if pool is None:
            host, _, port = name.rpartition(":")
            url = self._remote.parsed.node_url(host, int(port))
            pool = self._pools[name] = subscriber_pool(url, self._remote.config,
                                                       self._client_name, self._remote.options)
        self.node = name
        return pool.make_connection()

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()


class ClusterRemote(Remote):
    """A :class:`Remote` over a Redis Cluster; see the module docstring."""

    __slots__ = (
        "_flight",
        "_node_clients",
        "_raw",
        "_seen",
        "parsed",
        "seed_names",
        "topology",
    )

    is_cluster = True

    def __init__(
        self, url: str, config: CacheConfig, *, options: Mapping[str, Any] | None = None
    ) -> None:
        self._setup(url, config, options)
        self.parsed = parse_cluster_url(url)
        # every node's URL shares the query and credentials: one check, before any I/O
        connection_kwargs(self.parsed.node_url(*self.parsed.seeds[0]), self.options)
        self.seed_names = tuple(_name(h, p) for h, p in self.parsed.seeds)
        self._node_clients: dict[str, aioredis.Redis] = {}
        self.topology = Topology(("",) * SLOTS, (), (), -1)
        self._flight: SingleFlight[str, Topology] = SingleFlight()
        self._seen: Topology | None = None
        self._raw: Any = None
        self.cmd: Any = _Router(self)

    # -- nodes and the slot map ------------------------------------------------------------
    def node(self, name: str) -> aioredis.Redis:
        """The client of node ``name`` (``host:port``), made on first use."""
        client = self._node_clients.get(name)
        if client is None:
            if self._loop is None:
                raise errors.ClosedError("the cache is closed")
            host, _, port = name.rpartition(":")
            client = node_client(self.parsed.node_url(host, int(port)), self.config,
                                 self.options)
            self._node_clients[name] = client
        return client

    def node_of(self, key: Any) -> str:
        """The master of ``key``'s slot (any master for ``None``), per the slot map."""
        topo = self.topology
        if key is not None:
            name = topo.slots[_slot(key)]
            if name:
                return name
        return topo.masters[0] if topo.masters else self.seed_names[0]

    @property
    def client(self) -> Any:  # type: ignore[override]
        """A redis-py ``RedisCluster`` on the same nodes (made on first use)."""
        if self._raw is None:
            if "ssl_context" in self.options:
                raise errors.ConfigurationError(
                    "redis-py's RedisCluster takes no ssl_context=, only the ssl_* options: "
                    "connect with those (ssl_ca_certs=..., ssl_certfile=...) to use "
                    "redis_connection() on a Redis Cluster"
                )
            host, port = self.parsed.seeds[0]
            self._raw = aioredis.RedisCluster.from_url(
                self.parsed.node_url(host, port), decode_responses=False, **self.options
            )
        return self._raw

    def pool_for(self, key: str) -> Any:
        return self.node(self.node_of(key)).connection_pool

    def pubsub_pool(self, client_name: str) -> Any:
        return _SubscriberPools(self, client_name)

    async def refresh(self) -> Topology:
        """Read the slot map again (concurrent callers share one reading)."""
        return await self._flight.run("slots", self._load)

    async def _load(self) -> Topology:
        topo = self.topology
        candidates = list(dict.fromkeys([*random.sample(topo.masters, len(topo.masters)),
                                         *topo.nodes, *self.seed_names]))
        last: BaseException | None = None
        for name in candidates:
            client = self.node(name)
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("CLUSTER", "SLOTS")
                    pipe.execute_command("CLUSTER", "INFO")
                    reply, info = await pipe.execute()
            except (rexc.RedisError, OSError) as err:
                last = err
                continue
            host, _, port = name.rpartition(":")
            new = _topology(reply, info, (host, int(port)))
            if not new.masters:
                last = errors.ConfigurationError(f"node {name} serves no slot")
                continue
            self.topology = new
            return new
        self.errors += 1
        if isinstance(last, rexc.ResponseError) and "cluster support disabled" in str(last):
            raise errors.ConfigurationError(
                f"{self.safe_url}: the server is not a Redis Cluster node (cluster support "
                "disabled): use a redis:// URL or CacheConfig(topology='standalone')"
            ) from last
        if isinstance(last, errors.CalRedisError):
            raise last
        raise map_redis_error(last or OSError("no node"), "CLUSTER SLOTS") from last

    async def topology_changed(self) -> str | None:
        """Refresh the slot map; say why if a failover (or any change of masters or
        epoch) happened since the last call, else None. The first call sets the mark."""
        new = await self.refresh()
        old, self._seen = self._seen, new
        if old is None:
            return None
        if new.epoch != old.epoch:
            return f"cluster epoch {old.epoch} -> {new.epoch}"
        if new.slots != old.slots:
            return "slot map changed"
        return None

    # -- commands --------------------------------------------------------------------------
    async def execute(self, name: str, key: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Run one command on the master of ``key``'s slot, following redirections and
        re-sending what provably did not run (module docstring)."""
        node = self.node_of(key)
        asking = False
        redirects = 0
        deadline: float | None = None
        delay = self.config.retry_backoff or 0.01
        while True:
            client = self.node(node)
            try:
                if not asking:
                    return await getattr(client, name)(*args, **kwargs)
                async with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("ASKING")
                    getattr(pipe, name)(*args, **kwargs)
                    return (await pipe.execute())[1]
            except rexc.AskError as err:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise
                asking = not isinstance(err, rexc.MovedError)
                node = _name(err.host, err.port)
                if not asking:
                    self._moved(err.slot_id, node)
                continue
            except _NOT_RUN as err:
                failure: BaseException = err
            except (rexc.ConnectionError, rexc.TimeoutError) as err:
                if not connect_failed(err):
                    raise
                failure = err
            deadline = await self._backoff(failure, deadline, delay)
            delay = min(delay * 2, 0.25)
            node = self.node_of(key)
            asking = False

    async def _backoff(self, failure: BaseException, deadline: float | None, delay: float) -> float:
        """Wait before re-sending what did not run, with a fresh slot map; raise
        ``failure`` once ``cluster_retry_timeout`` is spent. Returns the deadline."""
        now = asyncio.get_running_loop().time()
        if deadline is None:
            deadline = now + self.config.cluster_retry_timeout
        if now >= deadline or self._loop is None:
            raise failure
        await asyncio.sleep(min(delay, deadline - now))
        self.retries += 1
        self.round_trips += 1
        with contextlib.suppress(errors.CalRedisError):
            await self.refresh()
        return deadline

    def _moved(self, slot: int, node: str) -> None:
        slots = list(self.topology.slots)
        slots[slot] = node
        topo = self.topology
        masters = topo.masters if node in topo.masters else (*topo.masters, node)
        self.topology = Topology(tuple(slots), masters, topo.nodes, topo.epoch)

    async def _pipeline(self, build: Callable[[Any], object], transaction: bool) -> list[Any]:
        recorder = _Recorder()
        build(recorder)
        commands = recorder.commands
        keys = [routing_key(name, args) for name, args, _ in commands]
        if transaction:
            slots = {_slot(k) for k in keys if k is not None}
            if len(slots) > 1:
                raise errors.CalRedisError(
                    "a MULTI/EXEC on a Redis Cluster must keep its keys in one slot, got "
                    + ", ".join(sorted({str(k) for k in keys if k is not None})[:4])
                )
            key = next((k for k in keys if k is not None), None)
            return await self._on_node(key, commands, transaction=True)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self.node_of(key), []).append(i)
        if len(groups) == 1:
            return await self._on_node(keys[0], commands, transaction=False)
        parts = await asyncio.gather(*(
            self._on_node(keys[idx[0]], [commands[i] for i in idx], transaction=False)
            for idx in groups.values()
        ))
        out: list[Any] = [None] * len(commands)
        for idx, replies in zip(groups.values(), parts, strict=True):
            for i, reply in zip(idx, replies, strict=True):
                out[i] = reply
        return out

    async def _on_node(
        self, key: Any, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
        *, transaction: bool,
    ) -> list[Any]:
        """Send ``commands`` as one pipeline to the master of ``key`` (see execute)."""

        async def send(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=transaction) as pipe:
                for name, args, kwargs in commands:
                    getattr(pipe, name)(*args, **kwargs)
                replies: list[Any] = await pipe.execute(raise_on_error=transaction)
                return replies

        node = self.node_of(key)
        deadline: float | None = None
        delay = self.config.retry_backoff or 0.01
        redirects = 0
        while True:
            try:
                replies = await send(self.node(node))
            except rexc.MovedError as err:  # a transaction refused before EXEC: none ran
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise
                node = _name(err.host, err.port)
                self._moved(err.slot_id, node)
                continue
            except (*_NOT_RUN, rexc.AskError) as err:
                failure: BaseException = err
            except (rexc.ConnectionError, rexc.TimeoutError) as err:
                if not connect_failed(err):
                    raise
                failure = err
            else:
                break
            deadline = await self._backoff(failure, deadline, delay)
            delay = min(delay * 2, 0.25)
            node = self.node_of(key)
        # Without a transaction each command stands alone: re-send only the ones the
        # cluster refused before running them, each with its own redirections.
        for i, reply in enumerate(replies):
            if isinstance(reply, rexc.AskError | rexc.TryAgainError | rexc.ClusterDownError):
                name, args, kwargs = commands[i]
                replies[i] = await self.execute(name, routing_key(name, args),
                                                args, kwargs)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    # -- lifecycle and helpers -------------------------------------------------------------
    async def open(self) -> bool:
        """Read the slot map (the first contact with the cluster); True."""
        self.round_trips += 1
        await self.refresh()
        return True

    async def close(self) -> None:
        self._loop = None
        clients, self._node_clients = self._node_clients, {}
        for client in clients.values():
            await close_client(client)
        raw, self._raw = self._raw, None
        if raw is not None:
            await raw.aclose()

    async def scan_keys(self, match: str, count: int = 1000) -> AsyncIterator[str]:
        """Every key matching ``match`` on every master."""
        for name in self.topology.masters:
            async for key in self._scan(self.node(name), match, count):
                yield key

    async def server_info(self) -> dict[str, Any]:
        """``INFO server`` of one master."""
        info: dict[str, Any] = await self.read("INFO", self.cmd.info, "server")
        return info

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["nodes"] = len(self.topology.nodes)
        return out
