"""Configuration: Redis URL, pool and timeouts, L1 namespace budgets.

The URL comes from the ``url`` argument or, when none is given, from the
``CAL_VALKEY_HOST`` environment variable (``redis://host:6379``, ``rediss://...``
or ``unix:///path/to/socket``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .errors import ConfigurationError

__all__ = (
    "ENV_URL",
    "CacheConfig",
    "EntryWeight",
    "NamespaceBudget",
    "WARMABLE",
    "WarmPlan",
    "DEFAULT_BUDGETS",
    "DEFAULT_ENTRY_WEIGHTS",
    "configure_logging",
    "redact_url",
    "resolve_url",
)

ENV_URL = "CAL_VALKEY_HOST"
ENV_LOG = "CAL_REDIS_LOG"

MB = 1024 * 1024
#: Seconds a lookup that found nothing is cached as absent (per namespace, 0: off).
DEFAULT_NEGATIVE_TTL = 5.0


@dataclass(frozen=True, slots=True)
class NamespaceBudget:
    """Size and lifetime of one L1 namespace: ``max_bytes`` of entry weight, ``ttl`` seconds.

    ``negative_ttl``: seconds a cache-first lookup that found nothing in Redis (by id,
    by ident, trunk IP, flow state) is remembered as absent in L1, so repeating it costs
    no round trip; 0 turns negative caching off for the namespace. An absent entry is
    fenced like any fill and dropped by the matching event and by this instance's own
    writes (docs/sync.md, *Negative caching*).

    ``stale_if_error`` and ``refresh_ahead``: the namespace's own values of
    :attr:`CacheConfig.stale_if_error` and :attr:`CacheConfig.refresh_ahead`; None (the
    default) takes the config's, 0 turns the feature off for the namespace.
    """

    max_bytes: int
    ttl: float
    negative_ttl: float = DEFAULT_NEGATIVE_TTL
    stale_if_error: float | None = None
    refresh_ahead: float | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, got {self.max_bytes}")
        if not self.ttl > 0:
            raise ConfigurationError(f"ttl must be > 0 seconds, got {self.ttl}")
        if not 0 <= self.negative_ttl < math.inf:  # also rejects NaN
            raise ConfigurationError(
                f"negative_ttl must be >= 0 seconds and finite (0: off), got {self.negative_ttl}"
            )
        if self.stale_if_error is not None:
            _check_stale(self.stale_if_error)
        if self.refresh_ahead is not None:
            _check_refresh(self.refresh_ahead)


def _check_stale(seconds: float) -> None:
    if not 0 <= seconds < math.inf:  # also rejects NaN
        raise ConfigurationError(
            f"stale_if_error must be >= 0 seconds and finite (0: off), got {seconds}"
        )


def _check_refresh(fraction: float) -> None:
    if not 0 <= fraction < 1:  # also rejects NaN
        raise ConfigurationError(
            f"refresh_ahead must be a fraction of the TTL >= 0 and < 1 (0: off), got {fraction}"
        )


#: SPEC defaults: regions 5 MB/60 s, accounts 50 MB/60 s, users 20 MB/60 s,
#: devices 20 MB/60 s, flow states 50 MB/4 h. Proxies share the regions budget size.
DEFAULT_BUDGETS: dict[str, NamespaceBudget] = {
    "regions": NamespaceBudget(5 * MB, 60.0),
    "proxies": NamespaceBudget(5 * MB, 60.0),
    "accounts": NamespaceBudget(50 * MB, 60.0),
    "users": NamespaceBudget(20 * MB, 60.0),
    "devices": NamespaceBudget(20 * MB, 60.0),
    "trunks_ip": NamespaceBudget(5 * MB, 60.0),
    "flow_states": NamespaceBudget(50 * MB, 4 * 3600.0),
}


@dataclass(frozen=True, slots=True)
class EntryWeight:
    """The L1 weight of one entry of a namespace: an estimate of the memory it holds.

    An entry whose JSON (as read from Redis) is ``json_len`` bytes long weighs
    ``base + int(per_byte * json_len)``; an ident -> id entry of the namespace weighs
    ``ident_base + len(ident) + len(id)``. The figures cover the decoded object, its
    key and the compiled LRU's bookkeeping (see :data:`DEFAULT_ENTRY_WEIGHTS`).
    """

    base: int
    per_byte: float = 1.0
    ident_base: int = 0

    def __post_init__(self) -> None:
        if self.base < 0 or self.ident_base < 0:
            raise ConfigurationError(
                f"base and ident_base must be >= 0, got {self.base} and {self.ident_base}"
            )
        if not self.per_byte >= 0:
            raise ConfigurationError(f"per_byte must be >= 0, got {self.per_byte}")


#: Measured with tracemalloc (tests/weight_support.py) on 100,000 realistic entries of
#: each namespace in the compiled L1, CPython 3.11, msgspec 0.23: the bytes an entry
#: really holds (decoded Struct, its field values, its key, the LRU's entry and dict
#: slot) beyond its JSON length. Every string field costs its length plus a fixed
#: header in memory and its length plus its quoted name in JSON, hence one byte per
#: JSON byte plus a per-model constant; a flow state's ``data`` dict costs about 2.9
#: bytes per JSON byte. ``trunks_ip``: ``json_len`` is ``len(ip) + len(account_id)``.
DEFAULT_ENTRY_WEIGHTS: dict[str, EntryWeight] = {
    "regions": EntryWeight(446, ident_base=286),
    "proxies": EntryWeight(422, ident_base=286),
    "accounts": EntryWeight(506, ident_base=286),
    "users": EntryWeight(523, ident_base=286),
    "devices": EntryWeight(620, ident_base=353),
    "trunks_ip": EntryWeight(216),
    "flow_states": EntryWeight(365, per_byte=2.85),
}


#: The values of :attr:`CacheConfig.topology`.
TOPOLOGIES: Final = ("auto", "standalone", "cluster", "sentinel")
#: The values of :attr:`CacheConfig.event_log`.
EVENT_LOG_MODES: Final = ("flush", "replay")

#: The namespaces :meth:`~cal_redis.CallableCache.warm` fills from a whole table.
WARMABLE = ("regions", "proxies", "accounts", "users")


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """What :meth:`~cal_redis.CallableCache.connect` warms L1 with (``CacheConfig.warm``):
    the arguments of :meth:`~cal_redis.CallableCache.warm`.

    Example::

        CacheConfig(warm=WarmPlan(namespaces=("regions", "proxies", "accounts"),
                                  devices=("acc42",)))
    """

    #: Whole tables to warm (``HSCAN``), each up to its namespace budget.
    namespaces: tuple[str, ...] = ("regions", "proxies", "accounts")
    #: User ids to warm; None: none, unless ``"users"`` is in ``namespaces``.
    users: tuple[str, ...] | None = None
    #: Accounts whose devices to warm (each account's whole devices hash).
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value in (("namespaces", self.namespaces), ("devices", self.devices)):
            if isinstance(value, str) or not isinstance(value, tuple):
                raise ConfigurationError(f"WarmPlan.{name} must be a tuple of names")
        unknown = [n for n in self.namespaces if n not in WARMABLE]
        if unknown:
            raise ConfigurationError(
                f"WarmPlan.namespaces: {unknown!r} cannot be warmed (one of {WARMABLE})"
            )
        if self.users is not None and (isinstance(self.users, str)
                                       or not isinstance(self.users, tuple)):
            raise ConfigurationError("WarmPlan.users must be a tuple of user ids or None")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Every tunable of a :class:`~cal_redis.CallableCache`, with production defaults.

    Example::

        config = CacheConfig(cluster=True).with_budget("users", max_bytes=64 << 20, ttl=30)
    """

    #: L1 budgets per namespace (see :data:`DEFAULT_BUDGETS`).
    budgets: dict[str, NamespaceBudget] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    #: Legacy flat weight: when set, every L1 entry weighs its JSON length plus this
    #: many bytes (and an ident -> id entry the two strings plus it), in place of the
    #: calibrated :attr:`entry_weights`. Deprecated: it undercounts real memory.
    entry_overhead: int | None = None
    #: Key style: True for the cluster style (account keys hash-tagged,
    #: ``cal:account:{a}:...``, and ident hashes in their table's slot,
    #: ``cal:user:idents:{cal:users}``), False for the standalone style, None (the
    #: default) to follow :attr:`topology`. A hash-tagged deployment behind a cluster
    #: proxy sets ``cluster=True`` on a standalone topology. See docs/wire-format.md.
    cluster: bool | None = None
    #: How the servers are reached: ``"standalone"`` (one server), ``"cluster"``
    #: (Redis Cluster: commands routed by slot to each master), ``"sentinel"`` (the
    #: primary that Redis Sentinel names, followed across failovers; needs a
    #: ``redis+sentinel://`` URL) or ``"auto"`` (the default): cluster for a
    #: ``redis+cluster://`` URL or a server reporting ``cluster_enabled:1``, Sentinel
    #: for a ``redis+sentinel://`` URL, standalone otherwise. See docs/deployment.md.
    topology: str = "auto"
    #: Seconds a cluster command that provably did not run (MOVED/ASK redirect,
    #: TRYAGAIN, CLUSTERDOWN, no connection could be made) keeps being re-sent, with
    #: backoff and a fresh slot map, before its error is raised.
    cluster_retry_timeout: float = 2.0
    #: Maximum connections in the redis-py pool.
    max_connections: int = 64
    #: Seconds a caller waits for a free connection when all ``max_connections`` are
    #: busy, before :class:`~cal_redis.errors.TimeoutError` (a burst waits, it does
    #: not fail).
    pool_timeout: float = 5.0
    #: Coalesce concurrent cache-first misses of one hash into one HMGET (a lone miss
    #: is still sent at once as an HGET). False: one HGET per miss.
    coalesce_reads: bool = True
    #: Seconds to establish a connection / to wait for a reply.
    connect_timeout: float = 2.0
    socket_timeout: float = 2.0
    #: Retries (with exponential backoff from ``retry_backoff`` s) of idempotent reads
    #: on connection errors. Writes are never retried.
    read_retries: int = 2
    retry_backoff: float = 0.01
    #: Turn the L1 tier off entirely (every cache-first read goes to Redis).
    local_cache: bool = True
    #: Subscribe to events and apply them to L1 (see docs/configuration.md).
    sync: bool = True
    #: Interval (s) of the PING heartbeat on the pub/sub connection; a silent
    #: connection is declared dead after ``2 * heartbeat_interval``.
    heartbeat_interval: float = 1.0
    #: RESP protocol version spoken to Redis (2 or 3).
    protocol: int = 3
    #: L1 entry weights per namespace (see :data:`DEFAULT_ENTRY_WEIGHTS`), so that a
    #: budget bounds the memory its entries really hold.
    entry_weights: dict[str, EntryWeight] = field(default_factory=lambda: dict(DEFAULT_ENTRY_WEIGHTS))
    #: Record OpenTelemetry metrics when a meter provider is found (docs/observability.md).
    metrics: bool = True
    #: The OpenTelemetry ``MeterProvider`` to record this cache's metrics on; None: the
    #: one of ``cal_redis.metrics.serve_prometheus`` if it serves, else the global one
    #: if the application set it, else none (nothing is recorded).
    meter_provider: Any = field(default=None, compare=False)
    #: Warm L1 at :meth:`~cal_redis.CallableCache.connect`, once the event
    #: subscription is confirmed (None: no warm-up). A failed warm-up is logged, not
    #: raised: the cache works cold.
    warm: WarmPlan | None = None
    #: What a gap in the event subscription (a lost pub/sub connection) does to L1:
    #: ``"flush"`` (the default) drops all of it; ``"replay"`` reads the events missed
    #: from the event logs (Redis Streams every write script appends to) and drops only
    #: what they name, flushing a namespace (or one account's part) only when its log
    #: no longer covers the gap. ``"replay"`` is only correct when **every writer of
    #: these tables logs its events** (this library always does; other writers use the
    #: script of docs/wire-format.md, "Event log"). See docs/sync.md.
    event_log: str = "flush"
    #: Seconds of events each log keeps (trimmed by MINID in the write script); a gap
    #: longer than this flushes instead of replaying.
    event_log_retention: float = 600.0
    #: Approximate cap on the entries of each log (MAXLEN ~), so a write burst cannot
    #: grow it without bound; a gap whose events were trimmed by it flushes.
    event_log_max_len: int = 100_000
    #: Serve-stale on error, seconds (0: off, the default): when a cache-first read
    #: cannot reach Redis (:class:`~cal_redis.errors.ConnectionError` or
    #: :class:`~cal_redis.errors.TimeoutError`, nothing else) and L1 still holds a value
    #: of the key filled or confirmed less than this long ago (expired, or held while
    #: the sync is degraded), that value is returned instead of the error. L1 keeps
    #: expired entries this long for it. Per namespace:
    #: :attr:`NamespaceBudget.stale_if_error`. See docs/sync.md, *Serve-stale on error*.
    stale_if_error: float = 0.0
    #: Refresh-ahead, a fraction of the TTL (0: off, the default): an L1 entry read
    #: during the last ``refresh_ahead`` of its TTL is read again from Redis in the
    #: background (one read, single-flight, fenced fill), so a hot key does not miss
    #: at expiry; the read returns the cached value at once. Per namespace:
    #: :attr:`NamespaceBudget.refresh_ahead`. See docs/sync.md, *Refresh-ahead*.
    refresh_ahead: float = 0.0

    def __post_init__(self) -> None:
        if self.entry_overhead is not None:
            if self.entry_overhead < 0:
                raise ConfigurationError("entry_overhead must be >= 0")
            warnings.warn(
                "CacheConfig.entry_overhead is deprecated: L1 weights are calibrated per "
                "namespace (CacheConfig.entry_weights)",
                DeprecationWarning,
                stacklevel=3,
            )
        if self.max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if not self.pool_timeout > 0:
            raise ConfigurationError("pool_timeout must be > 0 seconds")
        if self.read_retries < 0:
            raise ConfigurationError("read_retries must be >= 0")
        if self.protocol not in (2, 3):
            raise ConfigurationError(f"protocol must be 2 or 3, got {self.protocol}")
        if not self.heartbeat_interval > 0:
            raise ConfigurationError("heartbeat_interval must be > 0")
        if self.topology not in TOPOLOGIES:
            raise ConfigurationError(
                f"topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}"
            )
        if self.cluster not in (None, True, False):
            raise ConfigurationError(f"cluster must be True, False or None, got {self.cluster!r}")
        if not self.cluster_retry_timeout >= 0:
            raise ConfigurationError("cluster_retry_timeout must be >= 0 seconds")
        if self.event_log not in EVENT_LOG_MODES:
            raise ConfigurationError(
                f"event_log must be one of {', '.join(EVENT_LOG_MODES)}, got {self.event_log!r}"
            )
        if not 1 <= self.event_log_retention < math.inf:
            raise ConfigurationError(
                f"event_log_retention must be >= 1 second, got {self.event_log_retention}")
        if not (type(self.event_log_max_len) is int and self.event_log_max_len >= 100):
            raise ConfigurationError(
                f"event_log_max_len must be an int >= 100, got {self.event_log_max_len!r}")
        if self.warm is not None and not isinstance(self.warm, WarmPlan):
            raise ConfigurationError("warm must be a WarmPlan or None")
        _check_stale(self.stale_if_error)
        _check_refresh(self.refresh_ahead)

    @property
    def cluster_keys(self) -> bool:
        """True when the cluster key style is in use (:attr:`cluster`, else the topology)."""
        return self.cluster if self.cluster is not None else self.topology == "cluster"

    def budget(self, namespace: str) -> NamespaceBudget:
        """The budget of ``namespace``, falling back to the SPEC default."""
        try:
            return self.budgets.get(namespace) or DEFAULT_BUDGETS[namespace]
        except KeyError:
            raise ConfigurationError(f"unknown L1 namespace {namespace!r}") from None

    def stale_if_error_for(self, namespace: str) -> float:
        """Seconds a value of ``namespace`` may be served stale when Redis cannot be
        reached: the namespace's :attr:`NamespaceBudget.stale_if_error`, else
        :attr:`stale_if_error` (0.0: never)."""
        own = self.budget(namespace).stale_if_error
        return float(self.stale_if_error if own is None else own)

    def refresh_ahead_for(self, namespace: str) -> float:
        """The refresh-ahead fraction of ``namespace``: its
        :attr:`NamespaceBudget.refresh_ahead`, else :attr:`refresh_ahead` (0.0: off)."""
        own = self.budget(namespace).refresh_ahead
        return float(self.refresh_ahead if own is None else own)

    @property
    def serves_stale(self) -> bool:
        """True when some namespace has a stale window (L1 on and ``stale_if_error`` > 0):
        the sync then holds L1's entries on a loss of the event subscription instead
        of flushing them, so they can be served stale."""
        names = {*DEFAULT_BUDGETS, *self.budgets}
        return self.local_cache and any(self.stale_if_error_for(n) > 0 for n in names)

    def entry_weight(self, namespace: str) -> EntryWeight:
        """How an entry of ``namespace`` is weighed, falling back to the calibrated default."""
        if self.entry_overhead is not None:
            self.budget(namespace)  # unknown namespaces are refused alike
            return EntryWeight(self.entry_overhead, 1.0, self.entry_overhead)
        try:
            return self.entry_weights.get(namespace) or DEFAULT_ENTRY_WEIGHTS[namespace]
        except KeyError:
            raise ConfigurationError(f"unknown L1 namespace {namespace!r}") from None

    def with_budget(
        self, namespace: str, *, max_bytes: int, ttl: float,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        stale_if_error: float | None = None,
        refresh_ahead: float | None = None,
    ) -> CacheConfig:
        """A copy of this config with one namespace's budget replaced (``stale_if_error``
        and ``refresh_ahead`` None: the config's)."""
        budgets = dict(self.budgets)
        budgets[namespace] = NamespaceBudget(max_bytes, ttl, negative_ttl, stale_if_error,
                                             refresh_ahead)
        return replace(self, budgets=budgets)


def resolve_url(url: str | None) -> str:
    """``url`` if given, else ``$CAL_VALKEY_HOST``; a clear error when neither is set."""
    if url:
        return url
    env = os.environ.get(ENV_URL, "").strip()
    if not env:
        raise ConfigurationError(
            f"no Redis URL given and {ENV_URL} is not set "
            f"(e.g. {ENV_URL}=redis://localhost:6379)"
        )
    if "://" not in env:
        env = "redis://" + env
    return env


_QUERY_PASSWORD = re.compile(r"([?&;](?:sentinel_)?password=)[^&;#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for repr, logs and messages.

    Covers ``redis://user:pass@host``, ``rediss://:pass@host``, ``unix://:pass@/path``,
    ``...?password=pass`` and ``...?sentinel_password=pass``. Everything between the
    first ``:`` after the scheme's ``//`` and the last ``@`` is masked, so a password
    holding ``@``, ``/`` or ``?`` does not leak even where the URL is malformed.

    Example::

        redact_url("redis://app:s3cret@redis:6379/0")  # 'redis://app:***@redis:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, tail = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else userinfo) + "@" + tail
    return (scheme + sep if sep else "") + _QUERY_PASSWORD.sub(r"\1***", rest)


_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


def configure_logging(spec: str | None = None) -> int | None:
    """Map a ``RUST_LOG``-style spec to the ``cal_redis`` logger's level.

    Reads ``CAL_REDIS_LOG`` then ``RUST_LOG`` when ``spec`` is None. Accepts
    ``debug`` or ``info,cal_redis=trace`` forms; the ``cal_redis`` directive wins.
    The level is applied only while the application has not configured the
    ``cal_redis`` logger (its level is NOTSET and it has no handlers): the library
    never changes a level the application set.
    Returns the level applied, or None when nothing was applied.
    """
    spec = spec if spec is not None else os.environ.get(ENV_LOG) or os.environ.get("RUST_LOG")
    if not spec:
        return None
    level: int | None = None
    for part in spec.split(","):
        part = part.strip().lower()
        if "=" in part:
            target, _, lvl = part.partition("=")
            if target.strip().replace("-", "_") == "cal_redis" and lvl in _LEVELS:
                level = _LEVELS[lvl]
                break
        elif part in _LEVELS and level is None:
            level = _LEVELS[part]
    if level is None:
        return None
    logger = logging.getLogger("cal_redis")
    if logger.level != logging.NOTSET or logger.handlers:
        return None
    logger.setLevel(level)
    return level
