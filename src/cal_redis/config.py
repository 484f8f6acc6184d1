"""Configuration: Redis URL, pool and timeouts, L1 namespace budgets.

The URL comes from the ``url`` argument or, when none is given, from the
``CAL_VALKEY_HOST`` environment variable (``redis://host:6379``, ``rediss://...``
or ``unix:///path/to/socket``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace

from .errors import ConfigurationError

__all__ = (
    "ENV_URL",
    "CacheConfig",
    "NamespaceBudget",
    "DEFAULT_BUDGETS",
    "configure_logging",
    "redact_url",
    "resolve_url",
)

ENV_URL = "CAL_VALKEY_HOST"
ENV_LOG = "CAL_REDIS_LOG"

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class NamespaceBudget:
    """Size and lifetime of one L1 namespace: ``max_bytes`` of entry weight, ``ttl`` seconds."""

    max_bytes: int
    ttl: float

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, got {self.max_bytes}")
        if not self.ttl > 0:
            raise ConfigurationError(f"ttl must be > 0 seconds, got {self.ttl}")


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
class CacheConfig:
    """Every tunable of a :class:`~cal_redis.CallableCache`, with production defaults.

    Example::

        config = CacheConfig(cluster=True).with_budget("users", max_bytes=64 << 20, ttl=30)
    """

    #: L1 budgets per namespace (see :data:`DEFAULT_BUDGETS`).
    budgets: dict[str, NamespaceBudget] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    #: Fixed bytes added to each L1 entry's weight on top of its JSON length: the
    #: compiled LRU's bookkeeping measured 134 B per entry (benchmarks/bench_lru.py),
    #: rounded up for the key.
    entry_overhead: int = 160
    #: Write account-scoped keys with a Redis Cluster hash tag (``cal:account:{a}:...``).
    cluster: bool = False
    #: Maximum connections in the redis-py pool.
    max_connections: int = 64
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

    def __post_init__(self) -> None:
        if self.entry_overhead < 0:
            raise ConfigurationError("entry_overhead must be >= 0")
        if self.max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if self.read_retries < 0:
            raise ConfigurationError("read_retries must be >= 0")
        if self.protocol not in (2, 3):
            raise ConfigurationError(f"protocol must be 2 or 3, got {self.protocol}")
        if not self.heartbeat_interval > 0:
            raise ConfigurationError("heartbeat_interval must be > 0")

    def budget(self, namespace: str) -> NamespaceBudget:
        """The budget of ``namespace``, falling back to the SPEC default."""
        try:
            return self.budgets.get(namespace) or DEFAULT_BUDGETS[namespace]
        except KeyError:
            raise ConfigurationError(f"unknown L1 namespace {namespace!r}") from None

    def with_budget(self, namespace: str, *, max_bytes: int, ttl: float) -> CacheConfig:
        """A copy of this config with one namespace's budget replaced."""
        budgets = dict(self.budgets)
        budgets[namespace] = NamespaceBudget(max_bytes, ttl)
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


_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for repr, logs and messages.

    Covers ``redis://user:pass@host``, ``rediss://:pass@host``, ``unix://:pass@/path``
    and ``...?password=pass``. Everything between the first ``:`` after the scheme's
    ``//`` and the last ``@`` is masked, so a password holding ``@``, ``/`` or ``?``
    does not leak even where the URL is malformed.

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
